"""The Redis broker: offsets, epochs, history and fan-out shared by every node.

Per channel ``c`` (all keys under the node's prefix ``p``):

- ``{p}meta:{c}``  hash ``top`` (last offset) and ``epoch``;
- ``{p}hist:{c}``  a stream whose entry ids are ``<offset>-0``, fields ``e`` (the
  event text) and ``t`` (publish time, ms); trimmed to the history size, and the
  whole key expires after the history TTL without publishes;
- ``{p}ch:{c}``    the pub/sub channel; a message is ``offset:epoch:exclude:text``;
- ``{p}idem:{h}``  ``offset:epoch`` of a publish made for a request with an idempotency
  key (``h`` names the request and the publish's place in it), or for an outbox row
  (``h`` is ``outbox:{id}:{created_at}``), written by the same script, kept until the request's
  record is stored (the row is deleted): a node that dies between the two leaves it,
  and the retry (the outbox sweep), run again on any node, gets the same offset back.

One Lua script per publish increments the offset, builds the event text (the
same bytes as :func:`tether.wire.protocol.event`), stores it, trims, and PUBLISHes:
Redis runs scripts one at a time, so every node receives a channel's events in
offset order. When the meta hash is missing (a channel never used, or Redis
lost its data) the script starts a new epoch and drops any stale history, so a
client holding an old position gets ``recovered: false``, never a silent gap.

Each node keeps one pub/sub connection. Its reader remembers the last offset
delivered per channel; a jump (messages lost while the connection was down) is
filled from history before delivery continues, and a channel whose missed
events are gone, or whose epoch changed, is reported to ``on_lost`` so its
local subscribers resubscribe with ``since`` and learn the truth.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tether.broker.base import Broker, Deliver, OutboxRow, Position, Stream
from tether.storage.database import rider
from tether.wire import protocol
from tether.wire.errors import TetherError

log = logging.getLogger("tether.broker.redis")

#: Meta hashes outlive quiet channels this long; when one expires, the channel starts a new epoch.
META_TTL_MS = 30 * 24 * 3600 * 1000
#: An outbox row's marker normally goes within milliseconds (its row is deleted); one whose
#: node died first stays this long, far longer than any row waits for the sweeper.
OUTBOX_MARK_TTL_MS = 7 * 24 * 3600 * 1000

_PUBLISH = """
if KEYS[3] then
  local done = redis.call('GET', KEYS[3])
  if done then  -- this request's publish already ran (its node died before answering)
    local sep = string.find(done, ':', 1, true)
    return {tonumber(string.sub(done, 1, sep - 1)), string.sub(done, sep + 1)}
  end
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
local off = string.format('%d', top)
local text = ARGV[1] .. off .. ARGV[2]
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, off .. '-0', 'e', text, 't', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[7], off .. ':' .. epoch .. ':' .. ARGV[8] .. ':' .. text)
if KEYS[3] then
  redis.call('SET', KEYS[3], off .. ':' .. epoch, 'PX', ARGV[10])
end
return {top, epoch}
"""

_READ = """
local top = redis.call('HGET', KEYS[1], 'top')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not top or not epoch then
  epoch = ARGV[1]
  top = redis.call('HINCRBY', KEYS[1], 'top', 0)
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('DEL', KEYS[2])
  return {top, epoch}
end
local result = {tonumber(top), epoch}
local after = tonumber(ARGV[2])
if after >= 0 and after < tonumber(top) then
  local entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', after + 1), '+', 'COUNT', ARGV[3])
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local e, t
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then e = fields[i + 1] elseif fields[i] == 't' then t = fields[i + 1] end
    end
    result[#result + 1] = entry[1]
    result[#result + 1] = t
    result[#result + 1] = e
  end
end
return result
"""


_RESET = """
redis.call('HINCRBY', KEYS[1], 'top', 0)
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return {redis.call('HGET', KEYS[1], 'top'), ARGV[1]}
"""


def open_client(url: str, **options: Any) -> aioredis.Redis:
    """A Redis client that never re-sends a command by itself.

    redis-py can retry a call after a connection error or a timeout (the ``Redis()``
    constructor does by default): after a lost reply it sends the whole call again, so a
    publish pipeline stores and fans out every event twice at new offsets, and a lock
    script that granted a lock answers "held" the second time. A lost reply is handled by
    the caller instead, which knows whether its call is safe to repeat."""
    return aioredis.from_url(url, retry=Retry(NoBackoff(), 0), retry_on_error=[], **options)


#: What a call whose reply was lost (or late) raises: it may or may not have run.
LOST_REPLY = (RedisConnectionError, RedisTimeoutError, OSError)


def _unavailable(exc: BaseException) -> TetherError:
    return TetherError("unavailable", f"the broker (Redis) is unreachable ({type(exc).__name__}); retry shortly")


class RedisBroker(Broker):
    def __init__(self, client: aioredis.Redis, prefix: str = "tether:") -> None:
        self.redis = client
        self.prefix = prefix
        self._publish = client.register_script(_PUBLISH)
        self._read = client.register_script(_READ)
        self._reset = client.register_script(_RESET)
        self._deliver: Deliver | None = None
        self._channels: dict[str, None] = {}  # channels this node listens to
        self._last: dict[str, tuple[int, str]] = {}  # channel -> (last delivered offset, epoch)
        self._joined: dict[str, asyncio.Future[None]] = {}  # SUBSCRIBE sent, confirmation awaited
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = False
        self._ready = asyncio.Event()
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._settled: list[str] = []  # idempotency markers to drop
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, prefix: str = "tether:") -> "RedisBroker":
        client = open_client(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        return cls(client, prefix)

    # -- keys -------------------------------------------------------------------

    def _keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}meta:{channel}", f"{self.prefix}hist:{channel}"]

    def _topic(self, channel: str) -> str:
        return f"{self.prefix}ch:{channel}"

    # -- lifecycle -------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._reader = asyncio.create_task(self._read_forever())
        try:  # a node that cannot reach Redis at start refuses to start
            await asyncio.wait_for(self._ready.wait(), 10)
        except asyncio.TimeoutError:
            await self.close()
            raise RuntimeError("cannot reach Redis: its pub/sub connection did not come up in 10 s") from None

    async def close(self) -> None:
        if self._flusher is not None:  # publishes already accepted get their answer
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._deliver = None
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        await self.redis.aclose()

    async def healthy(self) -> bool:
        if not self._listening:
            return False
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), 2))
        except (RedisError, OSError, asyncio.TimeoutError):
            return False

    # -- the event path ------------------------------------------------------

    async def publish(self, channel: str, type: str, data: Any, *, history_size: int, history_ttl: float,
                      exclude: str | None = None, outbox: OutboxRow | None = None) -> Position:
        head, tail = protocol.event_parts(channel, type, data)
        ttl_ms = max(1, int(history_ttl * 1000))
        args = [head, tail, history_size, ttl_ms, int(time.time() * 1000), secrets.token_hex(4),
                self._topic(channel), exclude or "", max(META_TTL_MS, ttl_ms)]
        keys = self._keys(channel)
        r = rider()
        if outbox is not None:  # an outbox row: marked until the outbox has deleted it
            keys.append(self._outbox_mark(outbox))
            args.append(OUTBOX_MARK_TTL_MS)
        elif r is not None:  # a request with an idempotency key: the script marks it published
            mark = f"{self.prefix}idem:{hashlib.sha256(r.mark(channel).encode()).hexdigest()}"
            keys.append(mark)
            args.append(max(1, int(r.ttl * 1000)))
            r.settled.append(lambda: self._settle(mark))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))  # synchronously: call order is offset order
        self._start_flusher()
        top, epoch = await future
        return Position(int(top), _text(epoch))

    def _outbox_mark(self, row: OutboxRow) -> str:
        return f"{self.prefix}idem:outbox:{row[0]}:{row[1]!r}"

    def outbox_settled(self, rows: list[OutboxRow]) -> None:
        for row in rows:
            self._settle(self._outbox_mark(row))

    def _settle(self, mark: str) -> None:
        """The request's record is stored: its marker goes with the next round trip."""
        self._settled.append(mark)
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._flusher is None:  # a context of its own: it works for every publisher
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())

    async def _flush(self) -> None:
        """Publishes that arrive while a round trip is in flight go in the next one, as one
        pipeline on one connection: Redis runs its scripts in the order they were called."""
        try:
            while self._pending or self._settled:
                batch, self._pending = self._pending, []
                settled, self._settled = self._settled, []
                results: list[Any]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for keys, args, _ in batch:
                            await self._publish(keys=keys, args=args, client=pipe)
                        if settled:  # (lost with a lost reply: then they expire with their TTL)
                            pipe.unlink(*settled)
                        results = (await pipe.execute(raise_on_error=False))[:len(batch)]
                except LOST_REPLY as exc:
                    # Whether Redis ran the scripts is unknown (a lost or late reply): never sent
                    # again, which could store and fan out each event twice. Each publisher gets
                    # "unavailable"; a subscriber that missed an event recovers it by offset.
                    results = [_unavailable(exc)] * len(batch)
                except RedisError as exc:
                    results = [exc] * len(batch)
                for (_, _, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, (RedisConnectionError, RedisTimeoutError, OSError)):
                        future.set_exception(_unavailable(result))
                    elif isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None

    async def read(self, channel: str, after: int | None, *, history_ttl: float | None = None,
                   limit: int = 10_000) -> Stream:
        try:
            raw = await self._read(keys=self._keys(channel), args=[
                secrets.token_hex(4), -1 if after is None else after, limit,
                max(META_TTL_MS, int((history_ttl or 0) * 1000)),
            ])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        position = Position(int(raw[0]), _text(raw[1]))
        if after is None or after >= position.offset:
            return Stream(position)
        cutoff = (time.time() - history_ttl) * 1000 if history_ttl is not None else None
        events: list[tuple[int, str]] = []
        for i in range(2, len(raw), 3):
            if cutoff is not None and int(raw[i + 1]) < cutoff:
                continue
            events.append((int(_text(raw[i]).split("-", 1)[0]), _text(raw[i + 2])))
        complete = len(events) == position.offset - after and bool(events) and events[0][0] == after + 1
        return Stream(position, events, complete)

    async def reset(self, channel: str) -> Position:
        try:
            top, epoch = await self._reset(keys=self._keys(channel), args=[secrets.token_hex(4), META_TTL_MS])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        position = Position(int(top), _text(epoch))
        if channel in self._last:  # this node's feed continues in the new epoch (others resync)
            self._last[channel] = (position.offset, position.epoch)
        return position

    # -- node-level pub/sub -------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Returns once Redis confirms, so a history read that follows misses nothing.

        The position read *before* subscribing is the baseline: every later event
        either arrives live or is filled from history when the next one shows the gap.
        """
        if self._pubsub is None or not self._listening:
            raise TetherError("unavailable", "the broker (Redis) is reconnecting; retry shortly")
        position = (await self.read(channel, None)).position
        self._channels[channel] = None
        self._last[channel] = (position.offset, position.epoch)
        fut = self._joined.get(channel)
        if fut is None or fut.done():
            fut = self._joined[channel] = asyncio.get_running_loop().create_future()
        try:
            await self._pubsub.subscribe(self._topic(channel))
            await asyncio.wait_for(asyncio.shield(fut), 5)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._channels.pop(channel, None)
            raise _unavailable(exc) from exc

    async def unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._last.pop(channel, None)
        if self._pubsub is not None and self._listening:
            try:
                await self._pubsub.unsubscribe(self._topic(channel))
            except (RedisError, OSError):
                pass  # the reader resubscribes only what is in self._channels

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            pubsub = self.redis.pubsub()
            try:
                # An always-on subscription keeps the connection in pub/sub mode from the start.
                awaiting = {f"{self.prefix}node", *(self._topic(c) for c in self._channels)}
                await pubsub.subscribe(*awaiting)
                while awaiting:  # confirmed: from here on every publish reaches us
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        raise RedisTimeoutError("no SUBSCRIBE confirmation from Redis")
                    if msg["type"] == "subscribe":
                        awaiting.discard(_text(msg["channel"]))
                    else:
                        await self._handle(msg)
                self._pubsub = pubsub
                self._listening = True
                self._ready.set()
                delay = 0.1
                for channel in list(self._channels):  # what was published while we were away
                    await self._catch_up(channel, None)
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None:
                        await self._handle(msg)
            except asyncio.CancelledError:
                self._listening = False
                await pubsub.aclose()
                raise
            except Exception as exc:
                if self._listening:
                    log.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
                self._listening = False
                self._pubsub = None
                for fut in self._joined.values():
                    if not fut.done():
                        fut.set_exception(RedisConnectionError("pub/sub connection lost"))
                self._joined.clear()
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        topic = _text(msg["channel"])
        channel = topic[len(self.prefix) + 3:]
        if kind == "subscribe":
            fut = self._joined.pop(channel, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if kind != "message" or channel not in self._channels:
            return
        off, epoch, exclude, text = _text(msg["data"]).split(":", 3)
        await self._catch_up(channel, (int(off), epoch, exclude or None, text))

    async def _catch_up(self, channel: str, live: tuple[int, str, str | None, str] | None) -> None:
        """Deliver ``live`` in order after anything missed since the last delivered offset."""
        last = self._last.get(channel)
        if live is not None and (last is None or (last[1] == live[1] and live[0] == last[0] + 1)):
            self._emit(channel, live)
            return
        if last is None:
            return
        if live is not None and live[1] == last[1] and live[0] <= last[0]:
            return  # already delivered (filled from history before it arrived)
        stream = await self.read(channel, last[0])
        if stream.position.epoch != last[1] or (stream.position.offset > last[0] and not stream.complete):
            log.warning("channel %s: missed events are no longer in history; its subscribers resubscribe", channel)
            self._last[channel] = (stream.position.offset, stream.position.epoch)
            if self.on_lost is not None:
                self.on_lost(channel)
            return
        for offset, text in stream.events:
            self._emit(channel, (offset, last[1], None, text))
        if live is not None and live[0] > self._last[channel][0]:
            self._emit(channel, live)

    def _emit(self, channel: str, event: tuple[int, str, str | None, str]) -> None:
        offset, epoch, exclude, text = event
        self._last[channel] = (offset, epoch)
        if self._deliver is not None:
            self._deliver(channel, offset, text, exclude)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
