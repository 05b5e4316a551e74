"""One client connection, without the socket: frames in, frames out (sans-I/O).

A transport (``tether.server.ws``) feeds received frames to :meth:`handle` and
drains :meth:`next_batch` onto its socket. Everything between, requests,
subscriptions, limits and the bounded send queue, lives here so it is the same
for any transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from tether.broker.base import Broker
from tether.core import idempotency
from tether.core.auth import Identity
from tether.core.config import Settings
from tether.core.hub import Hub
from tether.core.idempotency import Idempotency
from tether.core.logs import one_line
from tether.core.metrics import Metrics
from tether.core.namespaces import Namespaces, Visible, sees
from tether.wire import protocol
from tether.wire.errors import TetherError
from tether.wire.protocol import CLOSE_ABUSE, CLOSE_SLOW

log = logging.getLogger("tether.connection")

#: A WebSocket request handler: (connection, request data) -> ACK data.
Op = Callable[["Connection", dict[str, Any]], Awaitable[Any]]


class Host(Protocol):
    """What a connection needs of the node that serves it (``tether.core.node.Node``)."""

    settings: Settings
    metrics: Metrics
    namespaces: Namespaces
    hub: Hub
    broker: Broker
    idempotency: Idempotency
    ops: dict[str, Op]

    def user_rate(self, user_id: str) -> bool: ...


ABUSE_ERRORS = 20  # this many refused frames …
ABUSE_WINDOW = 10.0  # … within this many seconds close the connection

# Requests never answered from an idempotency record: SUBSCRIBE is no write (its answer, a live
# recovery, must not be replayed) and REFRESH changes only this connection.
UNRECORDED = frozenset({"SUBSCRIBE", "REFRESH"})

# Requests a connection may have in flight at once; all others are handled one at a time.
PIPELINED = frozenset({"PUBLISH"})
#: Refusals a client retries as they are (the same write, later): see Connection._pipeline.
RETRYABLE = frozenset({"unavailable", "rate_limited"})
MAX_IN_FLIGHT = 64

# In a pipelined request's task: the future its successor waits for. The request sets it
# once it has handed its event to the broker (whose publish enqueues before suspending) or
# has finished, so offsets follow the order the client sent its publishes in. Waiting
# happens before the request takes anything (an idempotency lock), so no cycle can form.
_turn: contextvars.ContextVar["asyncio.Future[None] | None"] = contextvars.ContextVar("tether_turn", default=None)


def pass_turn() -> None:
    """Called by Node.publish right before the broker: the next pipelined request may go."""
    mine = _turn.get()
    if mine is not None:
        _turn.set(None)
        if not mine.done():
            mine.set_result(None)  # its waiter wakes on a later loop turn, after our enqueue


def _settle_after(before: "asyncio.Future[None] | None", f: "asyncio.Future[None]") -> None:
    """Resolve ``f`` once ``before`` is (now, if it is): a pipelined request that ends early
    never lets its successors overtake its predecessor."""
    if f.done():
        return
    if before is None or before.done():
        f.set_result(None)
    else:
        before.add_done_callback(lambda _: f.done() or f.set_result(None))


class Reply:
    """SUBSCRIBE's answer: ACK data already encoded (it splices stored events in),
    after which the live events held back during recovery are released."""

    __slots__ = ("data", "channel", "last")

    def __init__(self, data: str, channel: str, last: int) -> None:
        self.data, self.channel, self.last = data, channel, last


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Connection:
    def __init__(self, node: Host, identity: Identity) -> None:
        self.node = node
        self.identity = identity
        self.id = secrets.token_hex(8)
        self.connected_at = time.time()
        self.last_seen = self.last_ping = time.monotonic()
        self.channels: set[str] = set()
        self.state: dict[str, Any] = {}  # per-feature scratch (presence keys, locks to release, …)
        self._pending: dict[str, list[tuple[int, str]]] = {}
        self._sent: dict[str, int] = {}  # channel -> last offset sent: the server never sends one twice
        # channel -> its namespace's per-recipient filter (only channels that have one)
        self._filters: dict[str, Visible] = {}
        self._queue: list[str] = []  # taken whole by the writer; a list is far smaller than a deque
        self._wakeup: asyncio.Event | None = None  # created by next_batch, so a transport without a writer task pays nothing
        # Set by a transport without a writer task (tether.server.native): called when the
        # queue stops being empty or the connection closed; it calls drain() once it can write.
        self.wake: Callable[[], None] | None = None
        self._in_flight: set[asyncio.Task[None]] | None = None  # pipelined requests not yet answered (made on first use)
        self._last_turn: asyncio.Future[None] | None = None  # set once the latest pipelined request has published
        self._last_reply: asyncio.Future[None] | None = None  # set once it has been answered
        # The key of a keyed publish refused for now (unavailable, rate_limited): the keyed
        # publishes after it are refused too until it is resent, so none is stored before it.
        self._stopped_by: str | None = None
        self._limit = node.settings.send_queue_frames
        self._bucket = TokenBucket(node.settings.rate_per_connection, node.settings.rate_burst)
        self._errors: deque[float] | None = None  # only after a refused frame
        self.close_code: int | None = None
        self.close_reason = ""

    def __hash__(self) -> int:
        return id(self)

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    # -- outgoing -----------------------------------------------------------

    def send(self, text: str) -> None:
        """Queue a frame without waiting. A full queue closes a slow consumer."""
        if self.close_code is not None:
            return
        queue = self._queue
        if len(queue) >= self._limit:
            self._overflow()
            return
        # Never written here: what is queued in one turn of the event loop leaves in one
        # write (a batch of 32 publishes reaches each subscriber in one syscall, not 32).
        queue.append(text)
        if len(queue) == 1:
            self._signal()

    def _overflow(self) -> None:
        self._queue.clear()  # it will never drain: what a slow consumer missed it recovers with since
        self.close(CLOSE_SLOW, f"slow consumer: more than {self._limit} frames waiting to be sent")

    def _signal(self) -> None:
        if self.wake is not None:
            self.wake()
        elif self._wakeup is not None:
            self._wakeup.set()

    def deliver(self, channel: str, offset: int, text: str) -> bool:
        """Queue a channel event; True if it was queued now (not held, not a repeat)."""
        pending = self._pending.get(channel)
        if pending is not None:  # mid-SUBSCRIBE: hold until the ACK has gone out
            if len(pending) >= self._limit:  # held frames count against the same bound as queued ones
                self._overflow()
                return False
            pending.append((offset, text))
        elif offset > self._sent.get(channel, 0):  # a broker filling a gap may hand an event over twice
            self._sent[channel] = offset  # a filtered-out event too: it is never judged again
            if self._filters and channel in self._filters and not sees(self._filters[channel], self.identity, text):
                return False
            self.send(text)
            return True
        return False

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, protocol.close_reason(reason)
            self._pending.clear()  # what is queued still goes, before the close frame (ERRORs say why)
            self._signal()
            self.node.metrics.disconnects.labels(reason.split(":")[0]).inc()

    async def next_batch(self) -> list[str] | None:
        """What to write next; ``None`` once the connection is closing and all is written."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        while not self._queue and self.close_code is None:
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._queue:
            return self.take()
        return None

    def take(self) -> list[str]:
        """Everything queued, in order (the transport writes it now)."""
        batch, self._queue = self._queue, []
        if batch:
            self.node.metrics.messages_out.inc(len(batch))
        return batch

    def drain(self, write: Callable[[list[str]], None]) -> int:
        """Hand everything queued to ``write``, which must write it before returning; returns
        how many frames that was (the caller counts them in ``messages_out``, once per batch of
        connections). The queue is reused, not replaced: fan-out leaves no garbage per
        recipient to collect."""
        queue = self._queue
        n = len(queue)
        if n:
            write(queue)
            queue.clear()
        return n

    # -- incoming -----------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        self.last_seen = time.monotonic()
        if len(raw) > self.node.settings.max_frame_bytes:
            await self.settle()  # every reply leaves in request order, refusals too
            self.node.metrics.messages_in_of("invalid").inc()
            self._refuse(protocol.request_id(raw), TetherError(
                "too_large", f"frame of {len(raw)} bytes exceeds the limit of {self.node.settings.max_frame_bytes}"))
            return
        try:
            frame = protocol.parse(raw)
        except TetherError as exc:
            await self.settle()
            self.node.metrics.messages_in_of("invalid").inc()
            self._refuse(protocol.request_id(raw), exc)
            return
        # Label by known types only: a client choosing types must not grow the metric without bound.
        known = frame.type in self.node.ops or frame.type in ("PING", "PONG")
        self.node.metrics.messages_in_of(frame.type if known else "unknown").inc()
        if frame.type == "PING":
            self.send(protocol.frame("PONG", {"timestamp": frame.data.get("timestamp")}))
            return
        if frame.type == "PONG":
            return
        if not (self._bucket.take() and self.node.user_rate(self.user_id)):
            await self.settle()
            refusal = TetherError("rate_limited", "too many requests: slow down and retry")
            self._stop_if_retryable(frame, refusal)
            self._refuse(frame.id, refusal)
            return
        op = self.node.ops.get(frame.type)
        if op is None:
            await self.settle()
            self._refuse(frame.id, TetherError("bad_request", f"unknown frame type {frame.type!r}"))
            return
        if frame.type in PIPELINED:
            await self._pipeline(frame, op)
            return
        await self.settle()  # everything else waits for the pipelined requests before it
        await self._execute(frame, op)

    async def _pipeline(self, frame: protocol.Frame, op: Any) -> None:
        """Start a request without waiting for its answer, so a burst of publishes from one
        client is committed and fanned out as one batch. It still publishes in arrival order:
        each starts once its predecessor has published or finished (see :func:`pass_turn`).

        A keyed write (a client outbox's, which resends what fails for now) waits instead until
        its predecessor is answered. Once one is refused for now (``unavailable``,
        ``rate_limited``), the keyed publishes after it on this connection are refused too,
        until it is sent again: otherwise they would be stored before its resend, out of the
        order the client wrote them."""
        in_flight = self._in_flight
        if in_flight is None:
            in_flight = self._in_flight = set()
        elif len(in_flight) >= MAX_IN_FLIGHT:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        loop = asyncio.get_running_loop()
        prev, mine = self._last_turn, loop.create_future()
        prev_reply, my_reply = self._last_reply, loop.create_future()
        self._last_turn, self._last_reply = mine, my_reply

        keyed = frame.data.get("idempotency_key") is not None

        async def run() -> None:
            try:
                wait = prev_reply if keyed else prev
                if wait is not None and not wait.done():
                    await asyncio.shield(wait)
                _turn.set(mine)
                await self._execute(frame, op, after=prev_reply)
            finally:  # (even cancelled before its turn: then its successors wait for its predecessor)
                _settle_after(prev, mine)
                _settle_after(prev_reply, my_reply)

        task = loop.create_task(run())
        in_flight.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: "asyncio.Task[None]") -> None:
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.discard(task)
            if not in_flight:  # all answered: an idle connection keeps nothing of its bursts
                self._in_flight = self._last_turn = self._last_reply = None

    def _stop_if_retryable(self, frame: protocol.Frame, refusal: TetherError) -> None:
        """A keyed publish refused for now stops the keyed publishes after it on this connection
        until it is sent again (see :meth:`_pipeline`)."""
        key = frame.data.get("idempotency_key")
        if (refusal.code in RETRYABLE and frame.type in PIPELINED and isinstance(key, str)
                and self._stopped_by is None):
            self._stopped_by = key

    async def settle(self) -> None:
        """Wait until every pipelined request has been answered."""
        while self._in_flight:  # None or empty: nothing in flight
            await asyncio.wait(tuple(self._in_flight))

    async def _execute(self, frame: protocol.Frame, op: Any, after: "asyncio.Future[None] | None" = None) -> None:
        """Run one request and answer it, once ``after`` (the previous request's reply) is sent."""
        started = time.perf_counter()
        outcome: Any
        try:
            data = frame.data
            if frame.channel is not None and "channel" not in data:
                data = {**data, "channel": frame.channel}
            key = data.get("idempotency_key")
            if key is not None and self._stopped_by is not None and frame.type in PIPELINED:
                if key != self._stopped_by:
                    raise TetherError("unavailable", f"an earlier write (idempotency key {self._stopped_by!r}) "
                                      "was refused for now; resend it first, then this one")
                self._stopped_by = None  # its resend: the writes after it may follow
            if key is not None and frame.type not in UNRECORDED:
                # Scoped per caller kind, request type and resource: a key reused for another write is a new write.
                outcome = await self.node.idempotency.run(
                    idempotency.scope(self.identity, _operation(frame.type, data)), key, lambda: op(self, data))
            else:
                outcome = await op(self, data)
        except TetherError as exc:
            outcome = exc
        except Exception as exc:
            log.error("request %s failed: %s", frame.type, one_line(exc))  # one line: a client must not fill the disk
            outcome = TetherError("unavailable", f"{frame.type} failed inside the server; retry")
        finally:
            self.node.metrics.request_latency_of(frame.type).observe(time.perf_counter() - started)
        if isinstance(outcome, TetherError):
            self._stop_if_retryable(frame, outcome)
        pass_turn()  # finished without publishing (refused, or answered from its record): the next may go
        if after is not None and not after.done():
            await asyncio.shield(after)  # replies leave in the order the requests came, whichever finished first
        if isinstance(outcome, TetherError):
            self._refuse(frame.id, outcome)
        elif isinstance(outcome, Reply):
            self.send(protocol.ack_raw(frame.id, outcome.data))
            self.release(outcome.channel, outcome.last)
        elif frame.id is not None:
            self.send(protocol.ack(frame.id, outcome if outcome is not None else {}))

    def _refuse(self, request: str | None, exc: TetherError) -> None:
        self.node.metrics.errors.labels(exc.code).inc()
        self.send(protocol.error(request, exc))
        now = time.monotonic()
        if self._errors is None:
            self._errors = deque()
        self._errors.append(now)
        while self._errors and self._errors[0] < now - ABUSE_WINDOW:
            self._errors.popleft()
        if len(self._errors) >= ABUSE_ERRORS:
            self.close(CLOSE_ABUSE, f"too many refused frames: {ABUSE_ERRORS} in {ABUSE_WINDOW:.0f} s")

    # -- subscriptions -------------------------------------------------------

    async def subscribe(self, channel: str, since: Any) -> Reply:
        """Join a channel and recover what was missed, with no gap and no duplicate.

        Live events that arrive while history is read are held back and sent
        after the ACK, minus those the ACK already carries.
        """
        node = self.node
        ns = await node.namespaces.may_subscribe(self.identity, channel)
        fresh = channel not in self.channels
        if fresh and len(self.channels) >= node.settings.max_subscriptions:
            raise TetherError("too_large", f"subscription limit reached ({node.settings.max_subscriptions} per connection)")
        after, epoch = _parse_since(since)
        self.hold(channel)
        if ns.visible is not None:  # before the join: what arrives from now on is judged for this subscriber
            self._filters[channel] = ns.visible
        try:
            if fresh:
                self.channels.add(channel)
                await node.hub.add(self, channel)
            stream = await node.broker.read(channel, after, history_ttl=ns.history_ttl)
        except BaseException:
            await self.abandon(channel, fresh)
            raise
        pos = stream.position
        recovered = False
        publications: list[str] = []
        last = pos.offset
        if after is not None and epoch == pos.epoch and after <= pos.offset:
            if after == pos.offset:
                recovered = True
            elif stream.complete:
                recovered = True
                visible = ns.visible
                publications = [text for _, text in stream.events
                                if visible is None or sees(visible, self.identity, text)]
                last = max(last, stream.events[-1][0])  # past the hidden ones too: never sent later
        data = protocol.subscribe_ack_data(channel, pos.offset, pos.epoch, recovered, publications,
                                           filtered=ns.visible is not None)
        return Reply(data, channel, last)

    async def abandon(self, channel: str, fresh: bool) -> None:
        """Undo a SUBSCRIBE that failed after :meth:`subscribe` held the channel: a new
        subscription goes, with its held events; one the connection already had stays,
        and what was held meanwhile goes out (nothing of it was sent)."""
        if fresh:
            self.drop(channel)
            await self.node.hub.remove(self, channel)
        else:
            self.release(channel, 0)

    def hold(self, channel: str) -> bool:
        """Hold back live events of ``channel`` until :meth:`release`; False if already held."""
        if channel in self._pending:
            return False
        self._pending[channel] = []
        return True

    def release(self, channel: str, last: int) -> None:
        """Send the live events held during SUBSCRIBE, skipping those up to ``last``
        (the ACK carried them)."""
        self._sent[channel] = max(last, self._sent.get(channel, 0))
        sent = sum(self.deliver(channel, offset, text) for offset, text in self._pending.pop(channel, ()))
        if sent:
            self.node.metrics.deliveries.inc(sent)

    def drop(self, channel: str) -> None:
        """Forget a channel this connection may no longer receive, held events included."""
        self.channels.discard(channel)
        self._pending.pop(channel, None)
        self._sent.pop(channel, None)
        self._filters.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.drop(channel)
            await self.node.hub.remove(self, channel)


def _operation(type: str, data: dict[str, Any]) -> str:
    """What a keyed request does, for its idempotency scope: its type and the resource it names
    (the same key on another document, session, channel or lock is another write)."""
    target = [str(data[k]) for k in ("channel", "collection", "id", "session_id", "key", "stream_id") if k in data]
    return f"ws:{type}:" + "/".join(target)


def _parse_since(since: Any) -> tuple[int | None, str | None]:
    if since is None:
        return None, None
    if not isinstance(since, dict):
        raise TetherError("bad_request", "'since' must be an object {offset, epoch}")
    offset, epoch = since.get("offset"), since.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise TetherError("bad_request", "'since.offset' must be a non-negative integer")
    if not isinstance(epoch, str):
        raise TetherError("bad_request", "'since.epoch' must be a string")
    return offset, epoch


@contextlib.asynccontextmanager
async def holding_user_channel(conn: Connection) -> AsyncIterator[None]:
    """Hold live events on ``users.{id}`` while a snapshot is read and sent, so no live
    event is overtaken by an older snapshot (the same hold SUBSCRIBE uses)."""
    channel = f"users.{conn.user_id}"
    if not conn.hold(channel):  # already held by someone else
        yield
        return
    try:
        yield
    finally:
        conn.release(channel, 0)
