"""An idempotency record commits with the write it guards: a crash right after the write
(simulated here by the request dying before it could store its answer) must not let a
retry apply the write again. Before, the record was a separate later transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.helpers import started_node
from tests.services import need_postgres, unique, with_query
from tether.core.auth import Identity
from tether.core.idempotency import APPLIED
from tether.features.channels import ChannelsFeature
from tether.features.documents import DocumentsFeature
from tether.features.events import EventsFeature
from tether.features.locks import LocksFeature
from tether.wire.errors import TetherError
from tether.wire.jsonutil import loads


class Crash(BaseException):
    """The process dying between a write and the end of its request."""


@pytest.fixture(params=["sqlite", "postgresql"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    settings: dict[str, Any] = {}
    schema = unique("idem_")
    if request.param == "postgresql":
        settings["database_url"] = with_query(need_postgres(), schema=schema)
    async with started_node(tmp_path, ChannelsFeature, DocumentsFeature, LocksFeature, EventsFeature,
                            **settings) as n:
        yield n
    if request.param == "postgresql":
        from tests.contract.conftest import drop_schema

        await drop_schema(need_postgres(), schema)


async def crashed(node: Any, key: str, write: Any) -> None:
    async def fn() -> Any:
        await write()
        raise Crash()

    with pytest.raises(Crash):
        await node.idempotency.run("alice:rest", key, fn)


async def test_a_document_update_is_not_applied_again_after_a_crash(node: Any) -> None:
    docs = node.feature(DocumentsFeature).docs
    from tether.features.documents import CreateBody, ReplaceBody

    alice = Identity("alice")
    await docs.create(alice, "boards", CreateBody(id="b1", data={"n": 0}))
    await crashed(node, "u1", lambda: docs.replace(alice, "boards", "b1", ReplaceBody(data={"n": 1})))
    retried = await node.idempotency.run("alice:rest", "u1",
                                         lambda: docs.replace(alice, "boards", "b1", ReplaceBody(data={"n": 1})))
    assert retried["version"] == 2 and retried["data"] == {"n": 1}  # the first answer, not a new write
    assert (await docs.get(alice, "boards", "b1"))["version"] == 2


async def test_a_crashed_keyed_publish_is_answered_with_its_offset(tmp_path: Path) -> None:
    """The embedded broker commits the request's record with its event: the record holds the
    publish's answer (its offset), so the retry after a crash right after the commit gets it."""
    from types import SimpleNamespace

    async with started_node(tmp_path, ChannelsFeature) as node:
        channels = node.feature(ChannelsFeature)
        conn = SimpleNamespace(identity=Identity("alice"))  # all a PUBLISH reads of its connection
        data = {"channel": "public.answered", "data": {"n": 1}}
        await crashed(node, "p2", lambda: channels.publish(conn, data))
        retried = await node.idempotency.run("alice:rest", "p2", lambda: channels.publish(conn, data))
        assert retried["offset"] == 1 and retried["channel"] == "public.answered"
        assert (await node.broker.read("public.answered", 0)).position.offset == 1


async def test_a_keyed_publish_is_not_published_again_after_a_crash(node: Any) -> None:
    await crashed(node, "p1", lambda: node.publish("public.once", "PUBLICATION", {"n": 1}))
    retried = await node.idempotency.run("alice:rest", "p1",
                                         lambda: node.publish("public.once", "PUBLICATION", {"n": 1}))
    assert retried == APPLIED  # applied; its answer died with the request
    assert (await node.broker.read("public.once", 0)).position.offset == 1


async def test_a_lock_taken_before_a_crash_is_not_taken_again(node: Any) -> None:
    locks = node.feature(LocksFeature)
    alice = Identity("alice")
    await crashed(node, "l1", lambda: locks.acquire(alice, "doc-1", 30))
    assert await node.idempotency.run("alice:rest", "l1", lambda: locks.acquire(alice, "doc-1", 30)) == APPLIED
    assert (await locks.status("doc-1"))["fencing_token"] == 1  # acquired once


async def test_a_request_that_failed_before_writing_runs_again(node: Any) -> None:
    docs = node.feature(DocumentsFeature).docs
    from tether.features.documents import CreateBody, ReplaceBody

    alice, bob = Identity("alice"), Identity("bob")
    await docs.create(alice, "boards", CreateBody(id="b2", data={"n": 0}))
    with pytest.raises(TetherError):  # bob may not write alice's private document: nothing written
        await node.idempotency.run("bob:rest", "k", lambda: docs.replace(bob, "boards", "b2", ReplaceBody(data={})))
    with pytest.raises(Crash):  # reads, then dies: still nothing written, so nothing recorded
        await node.idempotency.run("alice:rest", "k2", lambda: _read_then_crash(docs, alice))
    again = await node.idempotency.run("alice:rest", "k2",
                                       lambda: docs.replace(alice, "boards", "b2", ReplaceBody(data={"n": 5})))
    assert again["version"] == 2 and again["data"] == {"n": 5}


async def _read_then_crash(docs: Any, who: Identity) -> None:
    await docs.get(who, "boards", "b2")
    raise Crash()


async def test_a_request_that_failed_after_writing_runs_again(node: Any) -> None:
    """No crash, an error: the retained row was written, its event could not be published.
    The client is told to retry (unavailable); the retry must publish it, not answer APPLIED."""
    events = node.feature(EventsFeature)
    real = node.broker.publish

    async def down(*args: Any, **kw: Any) -> Any:
        raise TetherError("unavailable", "the broker is down; retry")

    node.broker.publish = down
    with pytest.raises(TetherError):
        await node.idempotency.run("server:rest", "e1", lambda: events.push("bob", "CREDIT_UPDATE", {"credits": 5}))
    node.broker.publish = real
    again = await node.idempotency.run("server:rest", "e1",
                                       lambda: events.push("bob", "CREDIT_UPDATE", {"credits": 5}))
    assert again != APPLIED and (await node.broker.read("users.bob", 0)).position.offset == 1


async def test_a_keyed_create_whose_announce_failed_is_created_once_and_announced_later(tmp_path: Path) -> None:
    """documents.create commits its INSERT with its record and its DOCUMENT_CREATED (an outbox
    row). When the publish after the COMMIT fails, the request still succeeds: the document
    exists once, a retry answers it, and the event goes out once the broker is back."""
    from tether.features.documents import CreateBody, DocumentsFeature

    async with started_node(tmp_path, ChannelsFeature, DocumentsFeature) as node:
        docs = node.feature(DocumentsFeature).docs
        alice = Identity("alice")
        real = node.broker.publish

        async def down(*a: Any, **kw: Any) -> Any:
            raise TetherError("unavailable", "broker down")

        node.broker.publish = down  # type: ignore[method-assign]
        first = await node.idempotency.run("alice:rest", "c1", lambda: docs.create(alice, "notes", CreateBody(data={"t": 1})))
        named = await node.idempotency.run("alice:rest", "c2",
                                           lambda: docs.create(alice, "notes", CreateBody(id="n2", data={"t": 2})))
        node.broker.publish = real  # type: ignore[method-assign]
        retried = [await node.idempotency.run("alice:rest", "c1", lambda: docs.create(alice, "notes", CreateBody(data={"t": 1}))),
                   await node.idempotency.run("alice:rest", "c2",
                                              lambda: docs.create(alice, "notes", CreateBody(id="n2", data={"t": 2})))]
        assert retried == [first, named]
        listed = [d["id"] for d in (await docs.list(alice, "notes"))["documents"]]
        assert sorted(listed) == sorted([first["id"], "n2"])
        assert await node.outbox.sweep() == 6  # each document's channel, the collection's and the owner's scope
        for doc in (first, named):
            stream = await node.broker.read(f"collections.notes.documents.{doc['id']}", 0)
            assert [loads(text)["type"] for _, text in stream.events] == ["DOCUMENT_CREATED"]
        assert await node.outbox.sweep() == 0


async def test_a_connection_lost_after_a_group_commit_does_not_store_the_batch_twice(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg's release() re-raises an error from resetting a connection that dropped right
    after its COMMIT. The group commit must not take that for a failed commit and store the
    (committed, ACKed) batch again event by event."""
    import asyncpg

    from tests.contract.conftest import drop_schema
    from tests.services import need_postgres, unique, with_query

    schema = unique("r2_")
    try:
        async with started_node(tmp_path, ChannelsFeature,
                                database_url=with_query(need_postgres(), schema=schema)) as node:
            real_reset = asyncpg.connection.Connection.reset
            armed = False

            async def reset(self: Any, *, timeout: Any = None) -> None:
                nonlocal armed
                if armed:
                    armed = False
                    raise asyncpg.exceptions.ConnectionDoesNotExistError(
                        "connection was closed in the middle of operation")
                await real_reset(self, timeout=timeout)

            monkeypatch.setattr(asyncpg.connection.Connection, "reset", reset)
            armed = True
            pos = await node.publish("public.twice", "PUBLICATION", {"n": 1})  # ACKed, no error
            stream = await node.broker.read("public.twice", 0)
            frames = [loads(t)["data"] for _, t in stream.events]
            assert frames == [{"n": 1}], f"offset {pos.offset}, history {frames}"
    finally:
        await drop_schema(need_postgres(), schema)


async def test_a_failed_sqlite_commit_rolls_back(tmp_path: Path) -> None:
    """A COMMIT that fails (a deferred foreign key here; disk full in life) must not leave the
    one shared connection inside a transaction."""
    from tether.storage.sqlite import SQLiteDatabase

    db = await SQLiteDatabase.open(tmp_path / "c.db")
    await db.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    await db.execute("CREATE TABLE c (pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(Exception):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO c (pid) VALUES (42)")  # fails only at COMMIT
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO p (id) VALUES (1)")
    assert await db.fetchall("SELECT * FROM c") == []
    await db.close()
