// The seed's viewer, step by step, with the heartbeat interval from the command line.
// node viewer.js URL DEVICE [HEARTBEAT_MS] [--no-heartbeat-after MS]
// Prints one JSON line per event: {"t": ms since start, "event": ..., "arg": ...}.
const { io } = require("socket.io-client");
const [url, device, hbArg] = process.argv.slice(2);
const heartbeatMs = Number(hbArg || 10000);
const stopAfter = process.argv.includes("--no-heartbeat-after")
  ? Number(process.argv[process.argv.indexOf("--no-heartbeat-after") + 1]) : Infinity;
const t0 = Date.now();
const log = (event, arg) => console.log(JSON.stringify({ t: Date.now() - t0, event, arg }));
const socketio = io(url, { transports: ["websocket"] });
socketio.on("connect", () => { log("connect"); socketio.emit("find", device); });
socketio.on("disconnect", () => log("disconnect"));
const start = () => { socketio.emit("auth"); socketio.emit("heartbeatping"); };
socketio.on("create", () => { log("create"); start(); });
socketio.on("join", () => { log("join"); start(); });
let heartbeat_timer;
socketio.on("heartbeatpong", () => {
  log("heartbeatpong");
  if (heartbeat_timer) clearTimeout(heartbeat_timer);
  heartbeat_timer = setTimeout(() => {
    if (Date.now() - t0 < stopAfter) socketio.emit("heartbeatping");
  }, heartbeatMs);
});
socketio.on("bridge", (pathid) => log("bridge", pathid));
