"""Presence, locks and conflict-retrying updates, over REST."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from tether.client.backoff import Backoff
from tether.client.documents import _path, conflict_document
from tether.client.errors import ClientError, Conflict, LockTimeout, ServerError

if TYPE_CHECKING:
    from tether.client.base import BaseClient

log = logging.getLogger("tether.client")


def _user(client: "BaseClient") -> str:
    if client.user_id:
        return client.user_id
    token = client.token
    if token.count(".") == 2:  # a JWT: its ``sub`` (the server checks the signature, not us)
        import jwt

        return str(jwt.decode(token, options={"verify_signature": False})["sub"])
    return token.partition(":")[0]


class Presence:
    """``async with client.presence(key)``: present while inside, heartbeating every ``interval`` s."""

    def __init__(self, client: "BaseClient", key: str, interval: float) -> None:
        self.client, self.key, self.interval = client, key, interval
        self._task: asyncio.Task[None] | None = None
        self.path = f"/api/presence/{quote(key, safe='')}"

    async def beat(self) -> None:
        await self.client.rest("POST", self.path, {"user_id": _user(self.client)})

    async def members(self) -> list[str]:
        return list((await self.client.rest("GET", self.path)).get("users", []))

    async def __aenter__(self) -> "Presence":
        await self.beat()
        self._task = asyncio.create_task(self._heartbeat())
        return self

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except ClientError as exc:  # offline for a moment: the next beat may land in time
                log.info("presence heartbeat failed: %s", exc)

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        with contextlib.suppress(ClientError):
            await self.client.rest("DELETE", f"{self.path}/{quote(_user(self.client), safe='')}")


class Lock:
    """``async with client.lock(key, ttl) as lock``: held inside, extended at half its TTL.

    ``timeout``: 0 tries once, ``None`` waits forever, else waits that many seconds
    (raising :class:`LockTimeout`). If an extension is refused, or the TTL runs out
    while the server cannot be reached, ``lost`` is set and ``on_lost()`` runs at once;
    the body should check ``lock.lost`` (or pass ``lock.fencing_token`` to the resource,
    which refuses a stale holder).
    """

    def __init__(self, client: "BaseClient", key: str, ttl: float, timeout: float | None, on_lost: Callable[[], Any] | None) -> None:
        self.client, self.key, self.ttl, self.timeout, self.on_lost = client, key, ttl, timeout, on_lost
        self.path = f"/api/locks/{quote(key, safe='')}"
        self.token: str | None = None
        self.fencing_token: int | None = None
        self.expires_at: str | None = None
        self.lost = asyncio.Event()
        self._deadline = 0.0
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        give_up = None if self.timeout is None else time.monotonic() + self.timeout
        wait = Backoff(base=0.05, cap=1.0, max_attempts=None)
        while True:
            started = time.monotonic()
            got = await self.client.rest("POST", self.path, {"ttl_seconds": self.ttl})
            if got.get("acquired"):
                self.token, self.fencing_token, self.expires_at = got["token"], got.get("fencing_token"), got.get("expires_at")
                self._deadline = started + self.ttl
                return
            now = time.monotonic()
            if give_up is not None and now >= give_up:
                raise LockTimeout(self.key, got.get("holder"), got.get("expires_at"))
            delay = wait.next() or 0.05
            await asyncio.sleep(delay if give_up is None else min(delay, max(give_up - now, 0.0)))

    async def _extend(self) -> None:
        """Extend at half the TTL. The lock counts as lost the moment its TTL runs out
        without a confirmed extension: we cannot know it is still ours after that."""
        while True:
            await asyncio.sleep(self.ttl / 2)
            while True:
                started = time.monotonic()
                remaining = self._deadline - started
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    got = await asyncio.wait_for(self.client.rest(
                        "POST", self.path + "/extend", {"token": self.token, "ttl_seconds": self.ttl}), remaining)
                except asyncio.TimeoutError:
                    got = {"acquired": False}
                except ServerError as exc:
                    if exc.action != "reject":
                        await asyncio.sleep(min(0.2, max(remaining, 0)))
                        continue
                    got = {"acquired": False}
                except ClientError:  # unreachable for a moment: try again while the TTL lasts
                    await asyncio.sleep(min(0.2, max(remaining, 0)))
                    continue
                if not got.get("acquired"):
                    await self._lose()
                    return
                self.expires_at = got.get("expires_at", self.expires_at)
                self._deadline = started + self.ttl
                break

    async def _lose(self) -> None:
        self.lost.set()
        if self.on_lost is not None:
            result = self.on_lost()
            if asyncio.iscoroutine(result):
                await result

    async def release(self) -> bool:
        if self._task:
            self._task.cancel()
        if self.lost.is_set() or self.token is None:
            return False
        try:
            got = await self.client.rest("DELETE", self.path, {"token": self.token})
        except ClientError:
            return False  # it expires at its TTL anyway
        return bool(got.get("released"))

    async def __aenter__(self) -> "Lock":
        await self.acquire()
        self._task = asyncio.create_task(self._extend())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


async def update_with_retry(client: "BaseClient", collection: str, doc_id: str, fn: Callable[[Any], Any],
                            max_retries: int = 5) -> dict[str, Any]:
    """Read, apply ``fn(data) -> new data``, write with the version read; on 409 re-apply on the
    current document after a jittered backoff; give up with :class:`Conflict` after ``max_retries``."""
    if client.state == "connected":
        with contextlib.suppress(asyncio.TimeoutError):
            await client.flush(timeout=client.request_timeout)  # our own queued writes first
    wait = Backoff(base=0.05, cap=2.0, max_attempts=None)
    doc = await client.rest("GET", _path(collection, doc_id))
    for attempt in range(max_retries + 1):
        new = fn(copy.deepcopy(doc.get("data")))
        if asyncio.iscoroutine(new):
            new = await new
        try:
            doc = await client.rest("PUT", _path(collection, doc_id), {"data": new, "version": doc["version"]})
            client.store.put_document({"collection": collection, **doc})
            return doc  # type: ignore[no-any-return]
        except ServerError as exc:
            if exc.status != 409:
                raise
            doc = conflict_document(exc) or await client.rest("GET", _path(collection, doc_id))
            client.store.put_document({"collection": collection, **doc})
            if attempt == max_retries:
                raise Conflict(f"{collection}/{doc_id}: still conflicting after {max_retries} retries") from exc
            await client.sleep(wait.next() or 0.05)
    raise AssertionError("unreachable")
