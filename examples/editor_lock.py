"""An editor holding an edit lock with tether.client.

Alice takes the lock on a chapter and keeps it past its TTL (the client extends
it at half the TTL); Bob is told at once that it is taken; when Alice is done,
Bob gets it with a larger fencing token, so a storage that checks the token
would refuse a late write from Alice.

    python examples/editor_lock.py [URL] [--token ALICE] [--peer-token BOB]
"""

from __future__ import annotations

import asyncio

from cli_args import parse, run

from tether.client import Client, LockTimeout


async def main(url: str, token: str = "alice:desktop", peer_token: str = "bob:desktop") -> tuple[int, int]:
    alice = Client(url, token)
    bob = Client(url, peer_token)
    await alice.connect()
    await bob.connect()
    async with alice.presence("chapter-1"), alice.lock("chapter-1", ttl=2) as lock:
        first = lock.fencing_token
        print(f"alice holds the lock, fencing token {first}")
        try:
            async with bob.lock("chapter-1", ttl=1, timeout=0):
                raise SystemExit("bob should not get a held lock")
        except LockTimeout as taken:
            print(f"bob: chapter-1 is being edited by {taken.holder} until {taken.expires_at}")
        await asyncio.sleep(3)  # longer than the TTL: the extension keeps it
        assert not lock.lost.is_set(), "the lock should have been extended"
        print("alice still holds it after its TTL (extended at half the TTL)")
    async with bob.lock("chapter-1", ttl=1, timeout=5) as lock:
        second = lock.fencing_token
        print(f"bob holds the lock, fencing token {second}")
    await alice.close()
    await bob.close()
    assert first is not None and second is not None
    return first, second


if __name__ == "__main__":
    args = parse(__doc__, "alice:desktop", "bob:desktop")
    run(main(args.url, args.token, args.peer_token))
