"""The LockStore's end of a grant, on every implementation: each grant ends once, released or
expired, and an expired grant is handed to exactly one of the callers racing to announce it."""

from __future__ import annotations

import asyncio
import time

from tests.contract.test_lock_store import store  # noqa: F401  (the fixture: SQL and Redis)
from tether.features.locks import LockStore


async def expire(store: LockStore, key: str, holder: str) -> int:  # noqa: F811
    """A grant that expires almost at once; waits (polling the store, not the clock) until it has."""
    lock = await store.acquire(key, holder, 0.05)
    assert lock is not None
    while await store.status(key) is not None:
        await asyncio.sleep(0.01)
    return lock.fencing_token


async def test_an_expired_grant_is_claimed_once_by_racing_sweepers(store: LockStore) -> None:  # noqa: F811
    fencing = await expire(store, "k1", "alice")
    claims = await asyncio.gather(*(store.expired(time.time() + 0.01) for _ in range(8)))
    won = [lock for claim in claims for lock in claim]
    assert [(lock.key, lock.holder, lock.fencing_token) for lock in won] == [("k1", "alice", fencing)]
    assert await store.expired(time.time() + 0.01) == []


async def test_a_grant_over_an_expired_lock_claims_its_expiry(store: LockStore) -> None:  # noqa: F811
    fencing = await expire(store, "k2", "alice")
    got = await store.grant("k2", "bob", 30)
    assert got.lock is not None and got.lock.holder == "bob" and got.lock.fencing_token > fencing
    assert [(e.holder, e.fencing_token) for e in got.ended] == [("alice", fencing)]
    refused = await store.grant("k2", "carol", 30)  # a refusal names the live lock
    assert refused.lock is None and refused.ended == []
    assert refused.holder is not None and (refused.holder.holder, refused.holder.fencing_token) == ("bob", got.lock.fencing_token)
    assert await store.expired(time.time() + 0.01) == []  # announced by the grant: not again by a sweep


async def test_a_released_grant_is_never_reported_expired(store: LockStore) -> None:  # noqa: F811
    lock = await store.acquire("k3", "alice", 0.2)
    assert lock is not None
    ended = await store.end("k3", lock.token)
    assert ended is not None and (ended.holder, ended.fencing_token, ended.key) == ("alice", lock.fencing_token, "k3")
    assert await store.end("k3", lock.token) is None  # once
    assert await store.expired(time.time() + 1) == []
    ext = await store.acquire("k4", "carol", 30)
    assert ext is not None
    assert await store.expired(time.time()) == []  # alive: not claimable
