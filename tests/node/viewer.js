// The seed's viewer, step by step, with the heartbeat interval from the command line.
// node viewer.js URL DEVICE [HEARTBEAT_MS] [--no-heartbeat-after MS] [--token T] [--find-key K]
//   --token T      send T with auth and heartbeatping (a device that requires a token)
//   --find-key K   claim to be the device: find DEVICE K (and do nothing a viewer does)
//   --status MS    after auth, ask the device for its status (`status`, with the token if any),
//                  then again every MS ms (0: once); each answer is printed like any event
//                  ({"event": "status", "arg": {...}}), and as {"status": {...}} on a line of its own
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
const start = () => {
  if (findKey !== undefined) return;
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
