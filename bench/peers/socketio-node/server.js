// Node socket.io peer: rooms, one "publish" event that emits to a room and acks.
// Same wire workload as the Python peers (see bench/README in docs/benchmarks.md).
const http = require("http");
const { Server } = require("socket.io");

const port = parseInt(process.argv[2] || "0", 10);
const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end("ok");
});
const io = new Server(server, { transports: ["websocket"], perMessageDeflate: false, serveClient: false });
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => { socket.join(room); if (ack) ack(1); });
  socket.on("publish", (msg, ack) => { io.to(msg.r).emit("m", msg.d); if (ack) ack(1); });
});
server.listen(port, "127.0.0.1", () => console.log("listening " + server.address().port));
