// The seed's viewer, step by step, with the heartbeat interval from the command line.
// node viewer.js URL DEVICE [HEARTBEAT_MS] [--no-heartbeat-after MS] [--token T] [--find-key K]
//   --token T      send T with auth and heartbeatping (a device that requires a token)
//   --find-key K   claim to be the device: find DEVICE K (and do nothing a viewer does)
//   --status MS    after auth, ask the device for its status (`status`, with the token if any),
//                  then again every MS ms (0: once); each answer is printed like any event
//                  ({"event": "status", "arg": {...}}), and as {"status": {...}} on a line of its own
// Recordings from afar (no auth: live video is not asked for; times are RFC 3339 or epoch seconds):
//   --recordings FROM TO   ask for the recordings between FROM and TO
//   --play FROM TO         play them (TO "-": to the end), then heartbeat as usual; --id I names it,
//                          --speed N plays N times faster; once it plays, --then-seek T seeks to T
//                          and --then-stop stops it
//   --request EVENT JSON   emit EVENT with JSON (or the text if it is not JSON); repeatable
//   --repeat N             send the --request events N times (a flood)
// Prints one JSON line per event received: {"t": ms since start, "event": ..., "arg": first
// argument, "args": all arguments}, and {"event": "connect"|"disconnect"}.
const { io } = require("socket.io-client");
const [url, device, hbArg] = process.argv.slice(2);
const opt = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const heartbeatMs = Number(hbArg || 10000);
const stopAfter = opt("--no-heartbeat-after") !== undefined ? Number(opt("--no-heartbeat-after")) : Infinity;
const token = opt("--token");
const findKey = opt("--find-key");
const statusMs = opt("--status") !== undefined ? Number(opt("--status")) : undefined;
const t0 = Date.now();
const log = (event, args = []) =>
  console.log(JSON.stringify({ t: Date.now() - t0, event, arg: args[0], args }));
const socketio = io(url, { transports: ["websocket"] });
const withToken = (ev) => (token === undefined ? socketio.emit(ev) : socketio.emit(ev, token));
socketio.onAny((event, ...args) => log(event, args));
socketio.on("connect", () => {
  log("connect");
  if (findKey !== undefined) socketio.emit("find", device, findKey);
  else socketio.emit("find", device);
});
socketio.on("disconnect", () => log("disconnect"));
let status_timer;
const optN = (name, n) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv.slice(i + 1, i + 1 + n) : undefined;
};
const requests = process.argv.flatMap((a, i) => (a === "--request" ? [process.argv.slice(i + 1, i + 3)] : []));
const withTok = (o) => (token === undefined || typeof o !== "object" || o === null ? o : { ...o, token });
const when = (s) => (/^[0-9.]+$/.test(s) ? Number(s) : s);
const json = (s) => {
  try {
    return JSON.parse(s);
  } catch {
    return s;
  }
};
const aboutRecordings = () => optN("--recordings", 2) || optN("--play", 2) || requests.length > 0;
const askRecordings = () => {
  const rec = optN("--recordings", 2);
  if (rec) socketio.emit("recordings", withTok({ from: when(rec[0]), to: when(rec[1]) }));
  const repeat = Number(opt("--repeat") || 1);
  for (let n = 0; n < repeat; n++) for (const [ev, arg] of requests) socketio.emit(ev, withTok(json(arg)));
  const play = optN("--play", 2);
  if (play) {
    const req = { from: when(play[0]), speed: Number(opt("--speed") || 1), id: opt("--id") || "play" };
    if (play[1] !== "-") req.to = when(play[1]);
    socketio.emit("play", withTok(req));
    withToken("heartbeatping");
  }
};
let followed = false;
socketio.on("playback", (p) => {
  if (followed || !p || typeof p !== "object" || p.id !== (opt("--id") || "play")) return;
  followed = true;
  const seekTo = opt("--then-seek");
  if (seekTo !== undefined) socketio.emit("seek", withTok({ path: p.path, to: when(seekTo) }));
  else if (process.argv.includes("--then-stop")) socketio.emit("stop", withTok({ path: p.path }));
});
const start = () => {
  if (findKey !== undefined) return;
  if (aboutRecordings()) return askRecordings();
  withToken("auth");
  withToken("heartbeatping");
  if (statusMs === undefined) return;
  withToken("status");
  if (statusMs > 0 && !status_timer) status_timer = setInterval(() => withToken("status"), statusMs);
};
// A device's answer is an object; other viewers' requests (a plain relay shows them) are not.
socketio.on("status", (s) => {
  if (s && typeof s === "object") console.log(JSON.stringify({ status: s }));
});
socketio.on("create", start);
socketio.on("join", start);
let heartbeat_timer;
socketio.on("heartbeatpong", () => {
  if (heartbeat_timer) clearTimeout(heartbeat_timer);
  heartbeat_timer = setTimeout(() => {
    if (Date.now() - t0 < stopAfter) withToken("heartbeatping");
  }, heartbeatMs);
});
