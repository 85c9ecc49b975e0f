// A viewer for scripts/bench that plays recordings: find → create/join → play + heartbeatping,
// printing when each answer arrived, in Unix milliseconds (the clock the bench's reader uses).
//
// node bench_playback.js URL DEVICE FROM TO [--heartbeat-ms H]
//   FROM, TO: seconds since the epoch (TO "-": to the end of the recordings). Heartbeats every
//   H ms keep the session's lease. On SIGINT/SIGTERM it sends `stop` for its session and exits
//   once the device says it ended (at most 3 s later), so the next run finds a free session.
// JSON lines:
//   {"event":"path","path":...,"play_at":...,"at":...,"from":"playback"|"bridge"} as soon as the
//     first answer naming the session's path arrives (camstream-signal sends a viewer only its
//     own answers, so a `bridge` before `playback` is this viewer's);
//   {"event":"answered","path":...,"play_at":...,"playback_at":...,"bridge_at":...} once both did;
//   {"event":"ended","path":...,"reason":...,"at":...}; {"event":"error",...} for an `error`.
const { io } = require("socket.io-client");

const [url, device, fromArg, toArg] = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const heartbeatMs = opt("--heartbeat-ms", 2000);
const id = "bench";
const now = () => performance.timeOrigin + performance.now();
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const socket = io(url, { transports: ["websocket"] });
let playAt = 0;
let asked = false;
let path = null;
let playbackAt = 0;
const bridges = new Map(); // path → arrival time, for a bridge that comes before playback
let answered = false;
let stopping = false;
let timer = null;

const play = () => {
  if (asked) return; // a reconnect must not start a second session
  asked = true;
  const req = { from: Number(fromArg), speed: 1, id };
  if (toArg !== undefined && toArg !== "-") req.to = Number(toArg);
  playAt = now();
  socket.emit("play", req);
  socket.emit("heartbeatping");
};

const known = (p, at, from) => {
  if (path !== null) return;
  path = p;
  out({ event: "path", path, play_at: playAt, at, from });
};

const maybeAnswered = () => {
  if (answered || !playbackAt || !bridges.has(path)) return;
  answered = true;
  out({ event: "answered", path, play_at: playAt, playback_at: playbackAt, bridge_at: bridges.get(path) });
};

const exit = () => {
  socket.close();
  process.stdout.write("", () => process.exit(0));
};

socket.on("connect", () => socket.emit("find", device));
socket.on("create", play);
socket.on("join", play);
socket.on("heartbeatpong", () => {
  clearTimeout(timer);
  if (!stopping) timer = setTimeout(() => socket.emit("heartbeatping"), heartbeatMs);
});
socket.on("playback", (p) => {
  if (!p || typeof p !== "object" || p.id !== id || playbackAt) return;
  playbackAt = now();
  known(p.path, playbackAt, "playback");
  maybeAnswered();
});
socket.on("bridge", (p) => {
  const at = now();
  if (typeof p !== "string" || bridges.has(p)) return;
  bridges.set(p, at);
  if (!asked) return;
  if (path === null && playAt) known(p, at, "bridge");
  maybeAnswered();
});
socket.on("playback-ended", (e) => {
  if (!e || typeof e !== "object" || e.path !== path) return;
  out({ event: "ended", path, reason: e.reason, at: now() });
  if (stopping) exit();
});
socket.on("error", (e) => out({ event: "error", arg: e, at: now() }));

const stop = () => {
  if (stopping) return;
  stopping = true;
  clearTimeout(timer);
  if (path === null) return exit();
  socket.emit("stop", { path, id });
  setTimeout(exit, 3000);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
