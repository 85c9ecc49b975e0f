// A plain Socket.IO v4 relay with rooms, as the seed's server behaves:
// find(room) joins and answers create (room was empty) or join; auth, heartbeatping,
// heartbeatpong and bridge go to the other members of the sender's rooms. So do the requests
// about recordings (recordings, play, stop, seek) and their answers (recordings, playback,
// playback-ended, error), which a seed server relays if told to. It relays `status`
// the same way (a seed server relays what it is told to; the device's status needs this one).
// node relay.js PORT [--tls CERT.pem KEY.pem]   (with --tls: HTTPS and WSS only)
const fs = require("fs");
const { Server } = require("socket.io");
const port = Number(process.argv[2] || 3000);
const tls = process.argv.indexOf("--tls");
let io;
if (tls > 0) {
  const server = require("https").createServer({
    cert: fs.readFileSync(process.argv[tls + 1]),
    key: fs.readFileSync(process.argv[tls + 2]),
  });
  io = new Server(server, { cors: { origin: "*" } });
  server.listen(port, "127.0.0.1");
} else {
  io = new Server(port, { cors: { origin: "*" } });
}
io.on("connection", (socket) => {
  socket.on("find", (room) => {
    if (typeof room !== "string" || room.length > 64) return;
    const size = io.sockets.adapter.rooms.get(room)?.size || 0;
    socket.join(room);
    socket.emit(size === 0 ? "create" : "join", room);
  });
  for (const ev of ["auth", "heartbeatping", "heartbeatpong", "bridge", "recordings", "play", "stop", "seek", "playback", "playback-ended", "error", "status"]) {
    socket.on(ev, (...args) => {
      for (const room of socket.rooms) {
        if (room !== socket.id) socket.to(room).emit(ev, ...args);
      }
    });
  }
});
console.log(`relay listening on 127.0.0.1:${port}`);
