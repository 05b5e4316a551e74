"""Access that changes while a connection lives: revoked subscriptions and refreshed tokens.

A SUBSCRIBE checks access once; what it allowed can stop being true later (a
participant leaves a session, a member is removed from a document, a token is
refreshed without a role). :meth:`AccessWatch.recheck` tells every node to ask
the namespaces again for its local subscribers of some channels, on the
internal channel ``internal.access``, through ``node.publish`` like any event,
so it works the same with the in-process and the Redis broker. While a
subscriber is re-checked its live events of that channel are held (the same
hold SUBSCRIBE uses); a refused one is dropped with its held events, told by a
direct ``UNSUBSCRIBED {channel, reason}`` frame, and the features' hooks run
(a presence source that subscription held leaves too). An error while checking
drops too: access that cannot be verified is not kept.

``REFRESH {token}`` swaps a connection's token for a fresh one of the same
user and re-checks every subscription it holds under the new token's roles.
The node closes a connection whose token expired with code 4003.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Iterable

from tether.core.namespaces import Namespace
from tether.wire import protocol
from tether.wire.errors import TetherError, bad_request, forbidden
from tether.wire.jsonutil import loads
from tether.wire.timestamps import iso

if TYPE_CHECKING:
    from tether.core.connection import Connection

log = logging.getLogger("tether.access")

CHANNEL = "internal.access"


class AccessWatch:
    """Subscribed on every node to ``internal.access`` like a connection (see the module docstring)."""

    id = "access-watch"

    def __init__(self, node: Any) -> None:
        self.node = node  # tether.core.node.Node, which imports this module
        self._tasks: set[asyncio.Task[None]] = set()

    def namespaces(self) -> list[Namespace]:
        return [Namespace(CHANNEL, "none", "none", 0, 60.0, "node-to-node access re-checks")]

    async def start(self) -> None:
        await self.node.hub.add(self, CHANNEL)  # type: ignore[arg-type]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def recheck(self, channels: Iterable[str], users: Iterable[str] | None = None) -> None:
        """Re-check, on every node, the subscribers of ``channels`` (only ``users``' when given)."""
        await self.node.publish(CHANNEL, "RECHECK", {
            "channels": sorted(set(channels)), "users": None if users is None else sorted(set(users))})

    # -- as a hub subscriber -----------------------------------------------------------

    def deliver(self, channel: str, offset: int, text: str) -> None:
        notice = loads(text)["data"]
        users = notice.get("users")
        for ch in notice["channels"]:
            for conn in list(self.node.hub.channels.get(ch, ())):
                if getattr(conn, "identity", None) is None or (users is not None and conn.user_id not in users):
                    continue
                self.check(conn, ch)  # type: ignore[arg-type]

    def drop(self, channel: str) -> None:
        """(Hub protocol; this watcher never unsubscribes.)"""

    def close(self, code: int, reason: str) -> None:
        """The broker lost this feed: re-checks may have been missed, so re-check everything here."""
        log.warning("access re-checks may have been missed (%s); re-checking every subscription", reason)
        for ch, subs in list(self.node.hub.channels.items()):
            for conn in list(subs):
                if getattr(conn, "identity", None) is not None:
                    self.check(conn, ch)  # type: ignore[arg-type]

    # -- the check -----------------------------------------------------------------------

    def check(self, conn: "Connection", channel: str) -> None:
        """Hold ``channel``'s live events for ``conn`` now, ask the namespace again, then release or drop."""
        if channel == f"users.{conn.user_id}" or conn.closed:
            return
        held = conn.hold(channel)
        task = asyncio.get_running_loop().create_task(self._check(conn, channel, held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, conn: "Connection", channel: str, held: bool) -> None:
        try:
            await self.node.namespaces.may_subscribe(conn.identity, channel)
        except TetherError as exc:
            reason = "access revoked" if exc.code in ("forbidden", "not_found", "unauthorized") else "access could not be verified"
            await self.revoke(conn, channel, reason)
            return
        except Exception:
            log.exception("re-checking %s on %s failed; dropping the subscription", conn.id, channel)
            await self.revoke(conn, channel, "access could not be verified")
            return
        if held and channel in conn.channels:
            conn.release(channel, 0)

    async def revoke(self, conn: "Connection", channel: str, reason: str) -> None:
        """Drop one subscription at once (no event of it is sent after this), say why, run the hooks."""
        if not self.discard(conn, channel, reason):
            return
        for f in self.node.features:
            try:
                await f.unsubscribed(conn, channel)
            except Exception:
                log.exception("%s: unsubscribe hook failed", f.name)

    def discard(self, conn: "Connection", channel: str, reason: str) -> bool:
        """The synchronous part of :meth:`revoke` (callable from inside a delivery); False if
        ``conn`` was not subscribed. The caller runs the hooks (or schedules :meth:`hooks`)."""
        was = channel in conn.channels
        self.node.hub.discard(conn, channel)
        conn.drop(channel)
        if was:
            conn.send(protocol.frame("UNSUBSCRIBED", {"channel": channel, "reason": reason}, channel=channel))
        return was

    def hooks(self, conn: "Connection", channel: str) -> None:
        """Run the features' unsubscribe hooks later, for a subscription :meth:`discard` dropped."""
        async def run() -> None:
            for f in self.node.features:
                try:
                    await f.unsubscribed(conn, channel)
                except Exception:
                    log.exception("%s: unsubscribe hook failed", f.name)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- tokens --------------------------------------------------------------------------

    async def refresh(self, conn: "Connection", data: dict[str, Any]) -> Any:
        """``REFRESH {token}``: the same user's fresh token replaces the connection's."""
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("REFRESH needs 'token': a fresh token of the same user")
        if conn.identity.is_server:
            raise forbidden("a connection made with the API key has no token to refresh")
        fresh = self.node.auth.token(token)
        if fresh.user_id != conn.user_id:
            raise forbidden(f"REFRESH must carry a token of user {conn.user_id!r}, not {fresh.user_id!r}")
        # The device stays the connection's: it is how the others know this one.
        conn.identity = type(fresh)(conn.user_id, conn.device_id, fresh.roles, expires_at=fresh.expires_at)
        for channel in list(conn.channels):  # the new token may allow less (a role gone)
            self.check(conn, channel)
        return {"userId": conn.user_id, "expiresAt": expires(conn.identity.expires_at)}


def expires(at: float | None) -> str | None:
    return iso(at) if at is not None else None
