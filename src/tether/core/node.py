"""A Tether node: storage, broker and hub, and the features it is given.

It owns the one event path, :meth:`Node.publish` (write, store, broker,
fan-out), and the life of every connection. It knows nothing of sockets and
no feature by name: the composition root (``tether.server.app``) hands it the
:class:`Feature` classes to run.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, AsyncContextManager, Awaitable, Callable


from tether.broker.base import Broker, OutboxRow, Position
from tether.core.access import AccessWatch, expires
from tether.core.auth import Authenticator
from tether.core.config import Settings
from tether.core.connection import Connection, Op, TokenBucket, pass_turn
from tether.core.hub import Hub
from tether.core.idempotency import Idempotency
from tether.core.logs import one_line
from tether.core.metrics import Metrics
from tether.core.namespaces import Namespace, Namespaces, builtin, load_overrides
from tether.core.outbox import Change, Outbox
from tether.core.sinks import StreamSinks
from tether.storage import open_database
from tether.storage.database import Database
from tether.wire import protocol
from tether.wire.protocol import CLOSE_SHUTDOWN, CLOSE_TIMEOUT, CLOSE_TOKEN_EXPIRED
from tether.wire.timestamps import now_iso

log = logging.getLogger("tether.node")

#: Seconds a health check of PostgreSQL, SQLite or Redis may take before that service counts as
#: unreachable: a stalled link (nothing closed, no reply) must not hang /healthz or the admin API.
HEALTH_TIMEOUT = 2.0


async def answers(check: Callable[[], Awaitable[bool]], timeout: float = HEALTH_TIMEOUT) -> bool:
    """Whether ``check()`` says yes within ``timeout`` seconds; an error or no answer is a no.

    Not :func:`asyncio.wait_for`: that waits for the cancelled check to finish, and a check
    stuck on a stalled socket (a pooled connection being reset, say) may not finish soon."""
    task = asyncio.ensure_future(check())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        return False
    try:
        return bool(task.result())
    except Exception:
        return False


async def open_broker(settings: Settings, db: Database) -> Broker:
    if settings.redis_url:
        from tether.broker.redis import RedisBroker

        return await RedisBroker.open(settings.redis_url, settings.redis_prefix)
    from tether.broker.memory import MemoryBroker

    return MemoryBroker(db, sweep_every=settings.history_sweep, legacy_ttl=settings.history_ttl)


class Node:
    db: Database
    broker: Broker
    hub: Hub
    idempotency: Idempotency
    outbox: Outbox

    redis: Any = None  # a redis.asyncio.Redis when TETHER_REDIS_URL is set; features keep their state there

    def __init__(self, settings: Settings, features: list[type["Feature"]]) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.auth = Authenticator(settings)
        self.namespaces = Namespaces()
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, dict[Connection, None]] = {}  # user id -> its local connections
        # How many connections a user has; a feature that knows the whole cluster replaces it.
        self.count_user_connections: Callable[[str], Awaitable[int]] = self._local_connections
        # Channel owners' say over streams on their channels (sessions.* -> the chat), see core/sinks.py.
        self.stream_sinks = StreamSinks()
        self.ops: dict[str, Op] = {}
        self.features = [cls(self) for cls in features]
        self.access = AccessWatch(self)  # live re-checks of subscriptions, REFRESH
        self._user_buckets: dict[str, TokenBucket] = {}
        self._rest_buckets: dict[str, TokenBucket] = {}  # REST requests per user (tether.features.rest)
        self._keepalive_task: asyncio.Task[None] | None = None
        self.started = False
        # Set when the node drains (SIGTERM): /healthz fails and new WebSockets are refused with 503.
        self.draining = False
        self.id = settings.node_id or f"{socket.gethostname()}:{settings.port}"

    async def _local_connections(self, user_id: str) -> int:
        return len(self.users.get(user_id, ()))

    def feature(self, cls: type[Feature]) -> Any:
        for f in self.features:
            if isinstance(f, cls):
                return f
        raise LookupError(cls.__name__)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._abandon_start()  # an open database or client left behind would keep the process alive
            raise

    async def _abandon_start(self) -> None:
        """Close whatever a failed :meth:`start` had opened, each step on its own."""
        if self._keepalive_task:
            self._keepalive_task.cancel()
        steps: list[Callable[[], Awaitable[Any]]] = [f.stop for f in reversed(self.features)]
        for name in ("outbox", "broker", "db"):
            part = self.__dict__.get(name)
            if part is not None:
                steps.append(part.stop if name == "outbox" else part.close)
        steps.append(lambda: self.access.stop())
        if self.redis is not None:
            steps.append(self.redis.aclose)
        for step in steps:
            try:
                result = step()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await asyncio.wait_for(result, 5)
            except Exception:  # already failing: what could be closed is closed, the first error is the one raised
                log.debug("closing after a failed start", exc_info=True)

    async def _start(self) -> None:
        s = self.settings
        self.db = await open_database(s.database_url, s.data_dir)
        if s.redis_url:
            from tether.broker.redis import open_client

            self.redis = open_client(s.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.broker = await open_broker(s, self.db)
        self.hub = Hub(self.broker, self.metrics)
        self.broker.on_lost = self.hub.lost
        await self.broker.start(self.hub.deliver)
        self.idempotency = Idempotency(self.db, s.idempotency_ttl, shared=bool(s.redis_url))
        await self.idempotency.start()
        # In a cluster another node's request may hold a young row: the sweep leaves it a while.
        self.outbox = Outbox(self.db, self.publish, takes_rows=self.broker.takes_outbox_rows,
                             settled=self.broker.outbox_settled, grace=5.0 if s.redis_url else 0.0)
        if s.channels_file:
            self.namespaces.add(*load_overrides(s.channels_file))
        self.namespaces.add(*self.access.namespaces())
        self.ops["REFRESH"] = self.access.refresh
        await self.access.start()
        for f in self.features:
            self.namespaces.add(*f.namespaces())
            self.ops.update(f.ops())
            await f.start()
        self.namespaces.add(*builtin(s.history_size, s.history_ttl))
        await self.outbox.start()  # after the features: their channels' namespaces are known
        self._keepalive_task = asyncio.create_task(self._keepalive())
        self.started = True

    async def stop(self) -> None:
        if self._keepalive_task:
            self._keepalive_task.cancel()
        for conn in list(self.connections.values()):
            conn.close(CLOSE_SHUTDOWN, "server shutting down")
        # Let the transports finish closing, so disconnect hooks (presence leaves,
        # device goodbyes) still reach the broker before it closes.
        for _ in range(50):
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for f in reversed(self.features):
            await f.stop()
        await self.outbox.stop()
        self.access.stop()
        await self.broker.close()
        await self.db.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def healthy(self) -> bool:
        """Whether the database and the broker answer (each within HEALTH_TIMEOUT)."""
        checks = await self.health()
        return checks.get("database") == "ok" and checks.get("redis") in ("ok", "not configured")

    async def health(self) -> dict[str, str]:
        """Each check by name: "ok", or what is wrong (for /healthz and the admin API). The
        checks run at once, each bounded by HEALTH_TIMEOUT, so this answers within it."""
        if not self.started:
            return {"node": "starting"}
        if self.settings.redis_url:
            db_ok, redis_ok = await asyncio.gather(answers(self.db.healthy), answers(self.broker.healthy))
            redis = "ok" if redis_ok else "unreachable"
        else:  # the embedded broker keeps history in the database: its check is the database's
            db_ok = await answers(self._embedded_healthy)
            redis = "not configured"
        database = "ok" if db_ok else "unreachable"
        return {"database": database, "redis": redis, "draining": "yes" if self.draining else "no"}

    async def _embedded_healthy(self) -> bool:
        return await self.db.healthy() and await self.broker.healthy()

    # -- the one event path ---------------------------------------------------

    async def publish(self, channel: str, type: str, data: Any, *, exclude: str | None = None,
                      outbox: OutboxRow | None = None) -> Position:
        """Store an event in the channel's history and fan it out to every node.

        Every event of every module goes through here, so each reaches clients
        with its channel offset and is recoverable the same way.
        """
        ns = self.namespaces.find(channel)
        started = time.perf_counter()
        pass_turn()  # the next pipelined request may publish now: offsets follow the order it was sent in
        position = await self.broker.publish(
            channel, type, data, history_size=ns.history_size, history_ttl=ns.history_ttl, exclude=exclude,
            outbox=outbox,
        )
        self.metrics.events.inc()
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        return position

    def change(self) -> AsyncContextManager[Change]:
        """A transaction whose events (``change.emit``) commit with it: see :mod:`tether.core.outbox`."""
        return self.outbox.change()

    # -- connections ------------------------------------------------------------

    async def open(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.users.setdefault(conn.user_id, {})[conn] = None
        self.metrics.connections.inc()
        self.metrics.connections_opened.inc()
        conn.send(protocol.frame("CONNECTED", {
            "userId": conn.user_id,
            "deviceId": conn.device_id,
            "connectionId": conn.id,
            "serverTime": now_iso(),
            "pingInterval": self.settings.ping_interval,
            "expiresAt": expires(conn.identity.expires_at),  # send REFRESH before; closed with 4003 after
        }))
        own = f"users.{conn.user_id}"
        conn.channels.add(own)
        try:
            await self.hub.add(conn, own)
            for f in self.features:
                await f.connected(conn)
        except BaseException:
            # All or nothing: a transport whose open failed has no connection to clean up.
            await self.close(conn)
            raise

    async def close(self, conn: Connection) -> None:
        await conn.settle()  # its publishes still in flight land before it is forgotten
        if self.connections.pop(conn.id, None) is None:
            return
        self.metrics.connections.dec()
        mine = self.users.get(conn.user_id)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.users[conn.user_id]
                self._user_buckets.pop(conn.user_id, None)
        for channel in list(conn.channels):
            await self.hub.remove(conn, channel)
        for f in self.features:
            try:
                await f.disconnected(conn)
            except Exception as exc:  # one line: a broker outage fails every disconnect meanwhile
                log.warning("%s: disconnect hook failed: %s", f.name, one_line(exc))

    def user_rate(self, user_id: str) -> bool:
        bucket = self._user_buckets.get(user_id)
        if bucket is None:
            s = self.settings
            bucket = self._user_buckets[user_id] = TokenBucket(s.rate_per_user, s.rate_per_user * 2)
        return bucket.take()

    def rest_rate(self, user_id: str) -> float | None:
        """Take one REST request from the user's bucket: None if allowed, else seconds to wait."""
        buckets, s = self._rest_buckets, self.settings
        bucket = buckets.get(user_id)
        if bucket is None:
            if len(buckets) >= 10_000:  # forget idle users (their buckets are full again)
                idle = time.monotonic() - s.rest_rate_burst / s.rest_rate_per_user
                for uid in [u for u, b in buckets.items() if b.stamp < idle]:
                    del buckets[uid]
            bucket = buckets[user_id] = TokenBucket(s.rest_rate_per_user, s.rest_rate_burst)
        if bucket.take():
            return None
        return (1 - bucket.tokens) / bucket.rate

    async def _keepalive(self) -> None:
        """One timer for all connections: PING the quiet ones, close the silent ones."""
        interval = self.settings.ping_interval
        tick = min(1.0, interval / 4)
        while True:
            await asyncio.sleep(tick)
            self._check_links(interval)  # a call, so no connection stays referenced from this frame while it sleeps

    def _check_links(self, interval: float) -> None:
        now, wall = time.monotonic(), time.time()
        for conn in list(self.connections.values()):
            exp = conn.identity.expires_at
            if exp is not None and wall >= exp:
                conn.close(CLOSE_TOKEN_EXPIRED, "token_expired: send REFRESH with a fresh token before exp; reconnect with one")
            elif now - conn.last_seen > 2 * interval:
                conn.close(CLOSE_TIMEOUT, f"no frame for {2 * interval:g} s: the link looks dead")
            elif now - conn.last_ping >= interval:
                conn.last_ping = now
                conn.send(protocol.ping())


# What a feature plugs into a node: channel namespaces, WebSocket ops, REST routes, hooks.
# Each domain concept is one Feature subclass in tether.features; the node calls every
# feature's hooks, so no feature reaches into another's code.
class Feature:
    name = "feature"

    def __init__(self, node: Node) -> None:
        self.node = node

    def namespaces(self) -> list[Namespace]:
        return []

    def ops(self) -> dict[str, Op]:
        return {}

    def router(self) -> Any:
        """REST routes: a FastAPI ``APIRouter`` the server layer mounts under ``/api``, or None.
        Typed loosely so the core never imports a web framework."""
        return None

    async def start(self) -> None:
        """Create tables, start timers."""

    async def stop(self) -> None: ...

    async def connected(self, conn: Connection) -> None:
        """After CONNECTED went out and ``users.{id}`` is subscribed."""

    async def disconnected(self, conn: Connection) -> None: ...

    async def subscribed(self, conn: Connection, channel: str, data: dict[str, Any]) -> None:
        """After a SUBSCRIBE was acknowledged (``data`` is the request, e.g. ``presence``)."""

    async def unsubscribed(self, conn: Connection, channel: str) -> None: ...
