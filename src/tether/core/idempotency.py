"""Idempotency records: a repeated write with the same key gets the first answer again.

Kept in the durable database for ``idempotency_ttl`` (24 h by default), scoped
by caller and operation (:func:`scope`), so a client outbox can retry after a lost ACK without applying twice.

The record commits in the same transaction as the request's first SQL write
(a :class:`~tether.storage.database.Rider`; the embedded broker's group commit
carries it too), so a ``kill -9`` between the two cannot happen. Until the
request finishes the record holds what :func:`answer` said or :data:`APPLIED`;
then the full answer replaces it. A request that fails after writing keeps
the record (its retry must not apply the write again), unless it declared its
writes repeatable (:func:`rerun_on_failure`). The Redis broker's publish stores a marker
in its own Lua script instead (:meth:`~tether.storage.database.Rider.mark`): a retry that
runs the request again after a crash gets the first publish's offset back, never a second
event. Other writes outside SQL (Redis locks, presence) record right after the write.

In a cluster (``shared``) the per-process lock does not see the other nodes, so a
request first *claims* its key: one atomic ``INSERT … ON CONFLICT`` writes a pending
record. The node that wins runs the request; a retry of the same key on another node
finds the claim and waits for the answer instead of running it again (a publish to
Redis would otherwise go out twice). A claim whose node died (it stops renewing it) is taken
over after :data:`LEASE` seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from tether.storage.database import Database, Rider, rider, riding
from tether.wire.errors import TetherError, bad_request
from tether.wire.jsonutil import dumps, loads

if TYPE_CHECKING:
    from tether.core.auth import Identity

MAX_KEY = 200  # characters of an Idempotency-Key (REST header) or idempotency_key (WS data)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
]


log = logging.getLogger("tether.idempotency")

_RECORD = """INSERT INTO idempotency (scope, key, result, created_at) VALUES (?, ?, ?, ?)
              ON CONFLICT (scope, key) DO UPDATE SET result = excluded.result, created_at = excluded.created_at"""

#: A claimed record whose request is still running (cluster): no answer is ever this.
PENDING = dumps({"\u0000pending": True})
#: A claim not renewed for this long is taken over: the node that made it is presumed dead.
#: Its node renews it every LEASE / 4 while the request runs (node clocks must agree to well
#: under a second, as NTP keeps them).
LEASE = 5.0
#: How often a request waiting for another node's claim looks again, and for how long at most.
POLL = 0.02
WAIT = 10.0

_CLAIM = """INSERT INTO idempotency (scope, key, result, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (scope, key) DO UPDATE SET result = excluded.result, created_at = excluded.created_at
             WHERE (idempotency.result = ? AND idempotency.created_at < ?) OR idempotency.created_at < ?"""

#: The stored answer of a write whose own answer a crash lost (it is applied; the request's
#: code had not said what to answer yet, see :func:`answer`).
APPLIED = {"applied": True}


def answer(result: Any) -> None:
    """Say what the current request will answer, before the write that commits its record:
    a retry after a crash right after that write then gets this answer, not :data:`APPLIED`."""
    r = rider()
    if r is not None:
        r.answer = dumps(result)


def answer_on_publish(make: Callable[[Any], Any]) -> None:
    """Say what the current request will answer once its event has a position (``make(position)``):
    a broker that commits the record with the event (the embedded one) stores that answer, so a
    retry after a crash right after the commit gets the offset, not :data:`APPLIED`."""
    r = rider()
    if r is not None:
        r.at_publish = make


def rerun_on_failure() -> None:
    """Say the current request's writes are safe to repeat (an upsert, say). If it then fails
    after writing (its event could not be published), its record is removed and the retry runs
    it whole. Otherwise a request that wrote keeps its record even when it failed later: the
    retry gets its answer, since running a write like an INSERT twice would apply it twice."""
    r = rider()
    if r is not None:
        r.rerun = True


def scope(who: "Identity", operation: str) -> str:
    """Whose record and for what: the caller's kind (the API key or a user token, which can
    never share records whatever the user id) and user, and the operation, so a key reused
    for another request (another route, document or frame type) is a new write, not the
    first one's answer."""
    return f"{who.kind}:{who.user_id}:{operation}"


class Idempotency:
    def __init__(self, db: Database, ttl: float, *, shared: bool = False) -> None:
        self.db = db
        self.ttl = ttl
        self.shared = shared  # other nodes run requests on this database: claim keys first
        # (scope, key) -> [lock, callers holding or awaiting it]; dropped when the last leaves
        self._inflight: dict[tuple[str, str], list[Any]] = {}
        self._writes = 0

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)

    async def _claim(self, scope: str, key: str) -> str | None:
        """Claim the key for this request (None), or return the answer another request stored,
        waiting while another node's claim is pending."""
        give_up = time.monotonic() + WAIT
        while True:
            now = time.time()
            if await self.db.execute(_CLAIM, scope, key, PENDING, now, PENDING, now - LEASE, now - self.ttl):
                return None  # ours: new, expired, or abandoned by a dead node
            row = await self.db.fetchone("SELECT result FROM idempotency WHERE scope = ? AND key = ?", scope, key)
            if row is not None and row["result"] != PENDING:
                return str(row["result"])
            if time.monotonic() > give_up:
                raise TetherError("unavailable", "a request with this idempotency key is still running "
                                  "(on another node); retry later for its answer")
            await asyncio.sleep(POLL)  # pending on another node (or just forgotten: claim again)

    async def _renew(self, scope: str, key: str) -> None:
        """Keep this node's claim alive while its request runs (a slow Redis, a long wait)."""
        while True:
            await asyncio.sleep(LEASE / 4)
            try:
                await self.db.execute("UPDATE idempotency SET created_at = ? WHERE scope = ? AND key = ? AND result = ?",
                                      time.time(), scope, key, PENDING)
            except Exception:
                log.warning("could not renew the claim of %s/%s", scope, key, exc_info=True)

    async def _forget(self, scope: str, key: str, *, only_pending: bool = False) -> None:
        sql = "DELETE FROM idempotency WHERE scope = ? AND key = ?"
        args: tuple[str, ...] = (scope, key)
        if only_pending:
            sql, args = sql + " AND result = ?", (scope, key, PENDING)
        try:
            await self.db.execute(sql, *args)
        except Exception:  # the request's own error is the one to report
            log.warning("could not forget the record of failed request %s/%s", scope, key, exc_info=True)

    async def run(self, scope: str, key: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` once per (scope, key); later calls return the stored result.

        A refusal (an exception) before any write is not stored: the retry runs again.
        A request that wrote keeps its record, crash or error after the write, so the
        retry gets its answer and applies nothing twice; unless it said its writes may
        be repeated (:func:`rerun_on_failure`) and failed: then the retry runs again.
        """
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
            raise bad_request(f"'idempotency_key' must be a string of 1-{MAX_KEY} characters")
        ident = (scope, key)
        keeper: asyncio.Task[None] | None = None
        entry = self._inflight.get(ident)
        if entry is None:
            entry = self._inflight[ident] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                if self.shared:
                    stored = await self._claim(scope, key)
                    if stored is not None:
                        return loads(stored)
                    # Its own context: the renewals are no write of the request (no rider).
                    keeper = asyncio.get_running_loop().create_task(self._renew(scope, key),
                                                                    context=contextvars.Context())
                else:
                    row = await self.db.fetchone(
                        "SELECT result FROM idempotency WHERE scope = ? AND key = ? AND created_at > ?",
                        scope, key, time.time() - self.ttl,
                    )
                    if row is not None:
                        return loads(row["result"])
                # The record commits with the request's first write (storage.database.Rider) …
                r = Rider(_RECORD, lambda result: (scope, key, result, time.time()), dumps(APPLIED),
                          name=f"{scope}\x00{key}", ttl=self.ttl)
                token = riding.set(r)
                try:
                    result = await fn()
                except BaseException:
                    wrote, r.done = r.done, True  # (done: the statements below carry no record)
                    if wrote and r.rerun:  # it wrote (harmlessly repeatable), then failed:
                        await self._forget(scope, key)  # the retry runs it whole
                    elif self.shared and not wrote:  # wrote nothing in SQL: free the claim
                        await self._forget(scope, key, only_pending=True)
                    raise
                finally:
                    r.done = True  # … or never: tasks the request started must not write it later
                    riding.reset(token)
                    if keeper is not None:
                        keeper.cancel()
                # … and the full answer replaces it (or is written now, for a write outside SQL).
                await self.db.execute(_RECORD, scope, key, dumps(result), time.time())
                for settle in r.settled:  # the record answers retries now: markers may go
                    settle()
                self._writes += 1
                if self._writes % 1000 == 0:
                    await self.db.execute("DELETE FROM idempotency WHERE created_at < ?", time.time() - self.ttl)
                return result
        finally:
            # Not "lock.locked()": a released lock reads unlocked before its next waiter wakes.
            entry[1] -= 1
            if entry[1] == 0:
                del self._inflight[ident]
