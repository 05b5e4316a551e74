"""Idempotency across nodes (``shared``): a key is claimed before its request runs, so the
same key on two nodes at once runs once; a failed claim is freed; a dead node's is taken over."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tether.core import idempotency
from tether.core.idempotency import Idempotency
from tether.wire.errors import TetherError


async def nodes(db: Any) -> tuple[Idempotency, Idempotency]:
    a, b = Idempotency(db, 3600, shared=True), Idempotency(db, 3600, shared=True)
    await a.start()
    return a, b


async def test_the_same_key_on_two_nodes_at_once_runs_once(db: Any) -> None:
    a, b = await nodes(db)
    release = asyncio.Event()
    ran: list[str] = []

    async def first() -> dict[str, Any]:
        ran.append("a")
        await release.wait()  # between its write outside SQL and its record
        return {"offset": 1}

    async def second() -> dict[str, Any]:
        ran.append("b")
        return {"offset": 2}

    on_a = asyncio.ensure_future(a.run("alice:rest", "k1", first))
    while not ran:
        await asyncio.sleep(0)
    on_b = asyncio.ensure_future(b.run("alice:rest", "k1", second))
    await asyncio.sleep(10 * idempotency.POLL)  # b looks several times meanwhile
    assert ran == ["a"] and not on_b.done()
    release.set()
    assert await on_a == await on_b == {"offset": 1}
    assert ran == ["a"]


async def test_a_request_that_failed_before_writing_frees_its_claim(db: Any) -> None:
    a, b = await nodes(db)

    async def refused() -> Any:
        raise TetherError("forbidden", "no")

    async def allowed() -> dict[str, Any]:
        return {"ok": True}

    with pytest.raises(TetherError):
        await a.run("alice:rest", "k2", refused)
    assert await asyncio.wait_for(b.run("alice:rest", "k2", allowed), idempotency.WAIT / 2) == {"ok": True}


async def test_a_claim_left_by_a_dead_node_is_taken_over_after_its_lease(db: Any) -> None:
    a, _ = await nodes(db)
    await db.execute("INSERT INTO idempotency (scope, key, result, created_at) VALUES (?, ?, ?, ?)",
                     "alice:rest", "k3", idempotency.PENDING, time.time() - idempotency.LEASE - 1)

    async def again() -> dict[str, Any]:
        return {"offset": 7}

    assert await a.run("alice:rest", "k3", again) == {"offset": 7}
    row = await db.fetchone("SELECT result FROM idempotency WHERE scope = ? AND key = ?", "alice:rest", "k3")
    assert row is not None and row["result"] != idempotency.PENDING


async def test_a_claim_is_renewed_while_its_request_runs_longer_than_the_lease(
        db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency, "LEASE", 0.2)
    a, b = await nodes(db)
    release = asyncio.Event()
    ran: list[str] = []

    async def slow() -> dict[str, Any]:
        ran.append("a")
        await release.wait()
        return {"offset": 1}

    async def second() -> dict[str, Any]:
        ran.append("b")
        return {"offset": 2}

    on_a = asyncio.ensure_future(a.run("alice:rest", "k4", slow))
    while not ran:
        await asyncio.sleep(0)
    on_b = asyncio.ensure_future(b.run("alice:rest", "k4", second))
    await asyncio.sleep(5 * idempotency.LEASE)  # several leases: alive only if a renews its claim
    assert ran == ["a"] and not on_b.done()
    release.set()
    assert await on_a == await on_b == {"offset": 1}
