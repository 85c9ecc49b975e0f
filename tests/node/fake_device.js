// A stand-in device for camstream-signal: proves a device key and answers `status` requests
// with the payloads given, to see what the relay does with bad answers.
// node fake_device.js URL DEVICE KEY ANSWERS_JSON [--unsolicited TO]
//   ANSWERS_JSON   a JSON array; the n-th `status` request is answered with the n-th element
//                  (the last one once the list is used up), emitted as the arguments of
//                  `status` (an array: several arguments; anything else: one), followed by the
//                  routing argument {"to": <the request's viewer>}
//   --unsolicited TO  on `create`, emit `status` {"version": "unsolicited"} {"to": TO} unasked
//   --only VIEWER     answer only the requests of VIEWER
// Prints one JSON line per event received: {"t": ms, "event": ..., "args": [...]}.
const { io } = require("socket.io-client");
const [url, device, key, answersArg] = process.argv.slice(2);
const opt = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const answers = JSON.parse(answersArg);
const t0 = Date.now();
const socketio = io(url, { transports: ["websocket"] });
socketio.onAny((event, ...args) => console.log(JSON.stringify({ t: Date.now() - t0, event, args })));
socketio.on("connect", () => {
  console.log(JSON.stringify({ event: "connect" }));
  socketio.emit("find", device, key);
});
socketio.on("disconnect", () => console.log(JSON.stringify({ event: "disconnect" })));
socketio.on("create", () => {
  const to = opt("--unsolicited");
  if (to !== undefined) socketio.emit("status", { version: "unsolicited" }, { to });
});
let n = 0;
socketio.on("status", (...args) => {
  const last = args[args.length - 1];
  const viewer = last && typeof last === "object" ? last.viewer : undefined;
  if (viewer === undefined) return;
  if (opt("--only") !== undefined && viewer !== opt("--only")) return;
  const a = answers[Math.min(n, answers.length - 1)];
  n += 1;
  const out = Array.isArray(a) ? a : [a];
  socketio.emit("status", ...out, { to: viewer });
});
