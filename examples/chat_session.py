"""A chat in a live session (seed live-sessions-cloudkit.md) with tether.client.

Alice hosts a session and listens to its channel; Bob joins and writes. Bob's
message goes through his outbox, so it would be sent (once) even if he were
offline when he wrote it.

    python examples/chat_session.py [http://127.0.0.1:8080]
"""

from __future__ import annotations

import asyncio
import sys

from tether.client import Client


async def main(url: str) -> list[str]:
    alice = Client(url, "alice:phone")
    bob = Client(url, "bob:laptop")
    await alice.connect()
    await bob.connect()
    session = await alice.rest("POST", "/api/sessions", {
        "title": "Evening reading", "description": "a demo", "category": "study",
        "max_participants": 10, "tags": ["demo"], "is_private": False,
    })
    sid = session["id"]
    print(f"alice hosts session {sid}")
    heard: list[str] = []
    done = asyncio.Event()

    def on_message(event: dict) -> None:
        data = event["data"]
        msg = data.get("message", data)
        text = msg.get("message") if isinstance(msg, dict) else msg
        if isinstance(msg, dict) and msg.get("message_type") == "system":
            return
        heard.append(str(text))
        print(f"alice sees: {text}")
        if len(heard) == 2:
            done.set()

    room = await alice.subscribe(f"sessions.{sid}")
    room.on("MESSAGE_CREATED", on_message)
    await bob.rest("POST", f"/api/sessions/{sid}/join")
    await bob.subscribe(f"sessions.{sid}")
    for text in ("hello from bob", "shall we start?"):
        await bob.enqueue("POST", f"/api/sessions/{sid}/messages", {"message": text, "message_type": "text"})
    await bob.flush()
    await asyncio.wait_for(done.wait(), 10)
    await bob.rest("POST", f"/api/sessions/{sid}/leave")
    await alice.close()
    await bob.close()
    return heard


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
