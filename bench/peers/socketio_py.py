"""python-socketio (ASGI) on uvicorn: rooms, one ``publish`` event that emits to a room and acks."""

from __future__ import annotations

import sys

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], cors_allowed_origins=[])
app = socketio.ASGIApp(sio)


@sio.on("join")
async def join(sid: str, room: str) -> int:
    await sio.enter_room(sid, room)
    return 1


@sio.on("publish")
async def publish(sid: str, msg: dict) -> int:
    await sio.emit("m", msg["d"], room=msg["r"])
    return 1


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                ws_per_message_deflate=False, ws_ping_interval=None)
