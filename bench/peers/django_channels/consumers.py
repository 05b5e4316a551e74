"""One consumer per WebSocket, speaking the ``websockets-broadcast`` peer's frames:

``{"sub": room}`` joins the room's group (answered ``{"ok":0}``); ``{"pub": room, "id": n,
"d": data}`` encodes ``{"channel", "data"}`` once, ``group_send``s it and answers
``{"ok":n}`` once Redis has it. Each member's consumer gets the group message from the
channel layer and writes the frame. No offsets, no history, no auth.
"""

from __future__ import annotations

from typing import Any

import orjson
from channels.generic.websocket import AsyncWebsocketConsumer


class Rooms(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.rooms: list[str] = []
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        msg = orjson.loads(text_data or bytes_data or b"{}")
        if "pub" in msg:
            frame = orjson.dumps({"channel": msg["pub"], "data": msg["d"]}).decode()
            await self.channel_layer.group_send(msg["pub"], {"type": "room.message", "frame": frame})
            await self.send(text_data='{"ok":%d}' % msg["id"])
        elif "sub" in msg:
            await self.channel_layer.group_add(msg["sub"], self.channel_name)
            self.rooms.append(msg["sub"])
            await self.send(text_data='{"ok":0}')

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["frame"])

    async def disconnect(self, code: int) -> None:
        for room in self.rooms:
            await self.channel_layer.group_discard(room, self.channel_name)
