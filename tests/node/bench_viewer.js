// A viewer for scripts/bench, following the seed's steps (find → create/join → auth +
// heartbeatping → bridge) and printing when each happened, in Unix milliseconds.
//
// node bench_viewer.js URL DEVICE [--heartbeat-ms H] [--cycles N --gap-ms G]
//   without --cycles: one session, heartbeats every H ms until killed;
//   with --cycles: N uplink sessions one after the other: auth, wait for bridge, then no more
//   heartbeats, so the device's lease runs out and it detaches; G ms later the next auth. A
//   bridge that repeats the previous path means the old uplink was still live: the auth is
//   retried (not counted) until a new session answers.
// One JSON line per bridge: {"event":"bridge","path":...,"auth_at":...,"bridge_at":...}, then
// {"event":"done",...} in cycle mode.
const { io } = require("socket.io-client");

const [url, device] = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const heartbeatMs = opt("--heartbeat-ms", 10000);
const cycles = opt("--cycles", 0);
const gapMs = opt("--gap-ms", 1500);
const now = () => performance.timeOrigin + performance.now();
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const socket = io(url, { transports: ["websocket"] });
let authAt = 0;
let lastPath = null;
let done = 0;
let retries = 0;
let timer = null;

const auth = () => {
  authAt = now();
  socket.emit("auth");
  socket.emit("heartbeatping");
};

socket.on("connect", () => socket.emit("find", device));
socket.on("create", auth);
socket.on("join", auth);
socket.on("heartbeatpong", () => {
  if (cycles) return; // cycle mode: let the lease run out
  clearTimeout(timer);
  timer = setTimeout(() => socket.emit("heartbeatping"), heartbeatMs);
});
socket.on("bridge", (path) => {
  const bridgeAt = now();
  if (!cycles) {
    out({ event: "bridge", path, auth_at: authAt, bridge_at: bridgeAt });
    return;
  }
  if (path === lastPath) {
    retries += 1;
    setTimeout(auth, 250);
    return;
  }
  lastPath = path;
  done += 1;
  out({ event: "bridge", cycle: done, path, auth_at: authAt, bridge_at: bridgeAt });
  if (done >= cycles) {
    out({ event: "done", cycles: done, retries });
    socket.close();
    process.stdout.write("", () => process.exit(0));
    return;
  }
  setTimeout(auth, gapMs);
});
