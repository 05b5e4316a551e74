"""A chat in a live session with tether.client.

Alice hosts a session and listens to its channel; Bob joins and writes. Bob's
messages go through his outbox, so they would be sent (once) even if he were
offline when he wrote them. Alice skips the server's own "… joined" notices
(``message_type: "system"``) and stops once she has read both of Bob's.

    python examples/chat_session.py [URL] [--token ALICE] [--peer-token BOB]
"""

from __future__ import annotations

import asyncio

from cli_args import parse, run

from tether.client import Client

LINES = ("hello from bob", "shall we start?")


async def main(url: str, token: str = "alice:phone", peer_token: str = "bob:laptop") -> list[str]:
    alice = Client(url, token)
    bob = Client(url, peer_token)
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
        message = event["data"]  # the message itself: {id, seq, user_id, user_name, message, message_type, …}
        if message["message_type"] == "system":
            return
        heard.append(message["message"])
        print(f"alice sees: {message['message']}  (from {message['user_name']})")
        if set(LINES) <= set(heard):  # finished by what arrived, not by how much or how fast
            done.set()

    room = await alice.subscribe(f"sessions.{sid}")
    room.on("MESSAGE_CREATED", on_message)
    await bob.rest("POST", f"/api/sessions/{sid}/join")
    await bob.subscribe(f"sessions.{sid}")
    for text in LINES:
        await bob.enqueue("POST", f"/api/sessions/{sid}/messages", {"message": text, "message_type": "text"})
    await bob.flush()
    await asyncio.wait_for(done.wait(), 60)  # only if the server never delivers
    await bob.rest("POST", f"/api/sessions/{sid}/leave")
    await alice.close()
    await bob.close()
    return heard


if __name__ == "__main__":
    args = parse(__doc__, "alice:phone", "bob:laptop")
    run(main(args.url, args.token, args.peer_token))
