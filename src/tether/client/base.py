"""``Client``: keeps itself connected, recovers subscriptions, sends the outbox.

Three long-lived tasks, so each concern stays small:
- the supervisor owns the connection state machine (connect, resubscribe,
  wait for the link to drop, back off, reconnect, or give up as ``failed``);
- the dispatcher hands events to the app one at a time, in arrival order,
  dropping any offset it already delivered (exactly once, in order);
- the flusher sends the outbox in ``seq`` order, in batches, whenever connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from datetime import datetime
from typing import Any, Awaitable, Callable, Literal

import httpx

from tether.client.backoff import Backoff, Pacer
from tether.client.errors import ClientError, Disconnected, DisconnectedByServer, Failed, ServerError
from tether.client.link import CLOSE_TOKEN_EXPIRED, CLOSE_UNAUTHORIZED, Link
from tether.client.outbox import Entry, Outbox, open_db
from tether.client.store import Store
from tether.wire.protocol import CLOSE_OPERATOR, CLOSE_RESTART


log = logging.getLogger("tether.client")

State = Literal["disconnected", "connecting", "connected", "reconnecting", "failed"]
Handler = Callable[[dict[str, Any]], Any]
ErrorCallback = Callable[[ServerError, Entry], Any]
TokenRefresh = Callable[[], "str | Awaitable[str]"]


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _unix(stamp: Any) -> float | None:
    """An RFC 3339 timestamp from the server as Unix seconds (``None`` stays ``None``)."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _key(kind: str, target: str) -> str:
    """The change-listener key a write touches."""
    return {"publish": "channels/", "http": "requests/"}.get(kind, "documents/") + target


class Subscription:
    """A channel the client keeps subscribed, with its typed handlers and last delivered offset."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.handlers: dict[str | None, list[Handler]] = {}
        self.reload_handlers: list[Callable[[str], Any]] = []
        self.offset: int | None = None
        self.epoch: str | None = None
        self.filtered = False  # the server judges this channel's events per subscriber: offsets may skip

    def on(self, type: str | None, handler: Handler) -> Handler:
        """Call ``handler(event)`` for events of ``type`` (``None``: every event) on this channel."""
        self.handlers.setdefault(type, []).append(handler)
        return handler

    def on_reload(self, handler: Callable[[str], Any]) -> None:
        """Called when history could not fill a gap (``recovered: false``): reload this channel's state."""
        self.reload_handlers.append(handler)


class Write:
    """A queued write: ``await write`` gives the server's answer, or raises the refusal."""

    def __init__(self, entry: Entry, future: asyncio.Future[Any]) -> None:
        self.entry, self.id, self.future = entry, entry.seq, future

    def __await__(self):  # type: ignore[no-untyped-def]
        return asyncio.shield(self.future).__await__()

    @property
    def done(self) -> bool:
        return self.future.done()


class BaseClient:
    def __init__(
        self,
        url: str | list[str],
        token: str,
        store: str = ":memory:",
        *,
        token_refresh: TokenRefresh | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        batch_size: int = 50,
        send_rate: float = 50.0,
        request_timeout: float = 10.0,
        ping_interval: float | None = None,
        debounce: float = 0.05,
        resume: bool = True,
        restart_jitter: float = 2.0,
    ) -> None:
        # Several URLs (the nodes of a cluster without a load balancer): after a failed
        # attempt or a dropped link the client moves on to the next one.
        self.urls = [u.rstrip("/") for u in ([url] if isinstance(url, str) else url)]
        self._node = 0
        self.token = token
        self.token_refresh = token_refresh
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.batch_size = batch_size
        self.pacer = Pacer(send_rate, batch_size, time.monotonic)
        self._window = batch_size  # drops to 1 after a retryable refusal, until the outbox drains
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self.resume = resume
        # A draining node closes with 1012: reconnect after uniform(0, restart_jitter) seconds, not the
        # backoff, so its clients come back at once yet spread (no herd on the other nodes).
        self.restart_jitter = restart_jitter
        self.disconnect: dict[str, Any] | None = None  # the last DISCONNECT {reason, reconnect} the server sent
        self.db = open_db(store)
        self.outbox = Outbox(self.db)
        self.store = Store(self.db, self.outbox, debounce=debounce)
        self.http = httpx.AsyncClient(timeout=request_timeout)
        self.user_id: str | None = None
        self.device_id: str | None = None
        self.last_synced_at: float | None = None
        self.error: BaseException | None = None  # why the client is ``failed``
        self._state: State = "disconnected"
        self._state_listeners: list[Callable[[State], Any]] = []
        self._error_listeners: list[ErrorCallback] = []
        self._reload_listeners: list[Callable[[str], Any]] = []
        self._subscribe_error_listeners: list[Callable[[str, ServerError], Any]] = []
        self._handlers: dict[str | None, list[Handler]] = {}
        self._subs: dict[str, Subscription] = {}
        self._writes: dict[int, asyncio.Future[Any]] = {}
        self._link: Link | None = None
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._online = asyncio.Event()
        self._kick = asyncio.Event()
        self._drained = asyncio.Event()
        self._settled = asyncio.Event()  # the first connection attempt has an outcome
        self._state_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False

    # -- state ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server (node) the client uses now."""
        return self.urls[self._node % len(self.urls)]

    @property
    def state(self) -> State:
        return self._state

    def on_state(self, listener: Callable[[State], Any]) -> None:
        self._state_listeners.append(listener)

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("state listener failed")

    async def wait_for(self, *states: State, timeout: float = 30) -> State:
        """Wait until the state is one of ``states``."""
        async def wait() -> State:
            while self._state not in states:
                await self._state_changed.wait()
            return self._state
        return await asyncio.wait_for(wait(), timeout)

    @property
    def outbox_size(self) -> int:
        return len(self.outbox)

    def on(self, type: str | None, handler: Handler) -> Handler:
        """A handler for events of ``type`` on every channel (``None``: every event),
        including channels the server subscribes the client to (``users.{me}``)."""
        self._handlers.setdefault(type, []).append(handler)
        return handler

    def on_error(self, callback: ErrorCallback) -> None:
        """``callback(error, entry)`` when the server refuses a queued write (it was rolled back)."""
        self._error_listeners.append(callback)

    def on_reload(self, callback: Callable[[str], Any]) -> None:
        """``callback(channel)`` when a channel could not be recovered and its state must be reloaded."""
        self._reload_listeners.append(callback)

    def on_subscribe_error(self, callback: Callable[[str, ServerError], Any]) -> None:
        """``callback(channel, error)`` when the server refuses to restore a subscription on
        (re)connect (e.g. one made offline that is ``forbidden``); it is dropped."""
        self._subscribe_error_listeners.append(callback)

    # -- life --------------------------------------------------------------------------

    async def connect(self, *, wait: bool = True) -> None:
        """Start keeping connected. Returns once the first attempt succeeded or failed:
        offline, the client still works (writes queue up) and keeps retrying."""
        if not self._tasks:
            self._dispatcher = asyncio.create_task(self._dispatch())
            self._tasks = [asyncio.create_task(self._supervise()), self._dispatcher, asyncio.create_task(self._flush())]
        if wait:
            await self._settled.wait()
            if self._state == "failed" and self.error is not None:
                raise Failed(str(self.error)) from self.error

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._link is not None:
            await self._link.close()
        for fut in self._writes.values():  # still in the outbox: the next client on this store sends it
            if not fut.done():
                fut.set_exception(Disconnected("client closed before the server answered; the write stays queued"))
        self._writes.clear()
        await self.http.aclose()
        self.db.close()
        self._set_state("disconnected")

    async def __aenter__(self) -> "BaseClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _supervise(self) -> None:
        reauths = 0
        while not self._closing:
            self._set_state("reconnecting" if self.user_id is not None else "connecting")
            try:
                link = await Link.open(self.url, self.token, self._on_frame, timeout=self.request_timeout,
                                       ping_interval=self.ping_interval)
            except ServerError as exc:  # the token was refused
                if reauths < 3 and await self._reauth():
                    reauths += 1
                    continue
                self._fail(exc)
                return
            except (OSError, asyncio.TimeoutError, Disconnected, Exception) as exc:
                log.info("connect to %s failed: %s", self.url, exc)
                self._node += 1
                self._settled.set()
                if not await self._pause():
                    self._fail(Failed(f"gave up after {self.backoff.attempt} attempts: {exc}"))
                    return
                continue
            self._link = link
            self.user_id, self.device_id = link.hello.get("userId"), link.hello.get("deviceId")
            try:
                for sub in list(self._subs.values()):
                    try:
                        await self._subscribe_on(link, sub)
                    except ServerError as exc:
                        if exc.action != "reject":
                            raise
                        # Refused for good (made offline, or no longer allowed): drop that one
                        # subscription and say so, rather than dropping every connection.
                        await self._refused(sub, exc)
            except (Disconnected, ServerError) as exc:
                log.info("resubscribe failed: %s", exc)
                await link.close()
            if not link.closed:
                self.backoff.reset()
                reauths = 0
                self._set_state("connected")
                self._online.set()
                self._settled.set()
                self._kick.set()
                refresher = asyncio.create_task(self._keep_token_fresh(link))
                try:
                    await link.wait_closed()
                finally:
                    refresher.cancel()
            self._online.clear()
            self._link = None
            if self._closing:
                return
            self._node += 1
            if link.close_code in (CLOSE_UNAUTHORIZED, CLOSE_TOKEN_EXPIRED) and not await self._reauth():
                self._fail(ServerError("unauthorized", link.close_reason, 401))
                return
            if link.close_code == CLOSE_OPERATOR:
                self.disconnect = link.disconnect or {"reason": link.close_reason, "reconnect": False}
                if self.disconnect.get("reconnect") is not True:
                    self._fail(DisconnectedByServer(str(self.disconnect.get("reason") or link.close_reason)))
                    return
            self._set_state("reconnecting")
            if link.close_code == CLOSE_RESTART:
                await self.sleep(self.backoff.random() * self.restart_jitter)
                continue
            if not await self._pause():
                self._fail(Failed(f"gave up after {self.backoff.attempt} attempts"))
                return

    async def _pause(self) -> bool:
        delay = self.backoff.next()
        if delay is None:
            return False
        await self.sleep(delay)
        return True

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._set_state("failed")
        self._settled.set()
        for fut in self._writes.values():
            if not fut.done():
                fut.set_exception(Failed(str(exc)))

    async def _keep_token_fresh(self, link: Link) -> None:
        """Before the token expires (``expiresAt`` in CONNECTED), get a new one from
        ``token_refresh`` and hand it over with ``REFRESH``: the connection stays open.
        If this fails the server closes with 4003 when the token expires, and the client
        reconnects with a fresh token."""
        if self.token_refresh is None:
            return
        expires = _unix(link.hello.get("expiresAt"))
        server_time = _unix(link.hello.get("serverTime"))
        skew = server_time - time.time() if server_time is not None else 0.0
        while expires is not None and not link.closed:
            remaining = expires - (time.time() + skew)
            # 80 % into what is left, but never later than a minute before it expires.
            await asyncio.sleep(max(0.0, remaining - min(60.0, remaining / 5)))
            try:
                token = await _call(self.token_refresh)
                ack = await link.request("REFRESH", {"token": token}, timeout=self.request_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("token refresh before expiry failed: %s", exc)
                await asyncio.sleep(max(0.05, min(5.0, (expires - time.time() - skew) / 4)))
                continue
            self.token = token
            expires = _unix(ack.get("expiresAt"))

    async def _reauth(self) -> bool:
        if self.token_refresh is None:
            return False
        try:
            self.token = await _call(self.token_refresh)
        except Exception as exc:
            log.warning("token refresh failed: %s", exc)
            return False
        return True

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, channel: str, handler: Handler | None = None, *,
                        on_reload: Callable[[str], Any] | None = None) -> Subscription:
        """Keep ``channel`` subscribed; ``handler(event)`` gets each event once, in order.

        With ``resume`` (the default) a channel this store saw before continues from
        its last delivered offset, so events published while the app was closed arrive.
        Offline, the subscription is made as soon as the client connects.
        """
        sub = self._subs.get(channel)
        if sub is None:
            sub = Subscription(channel)
            if self.resume and (pos := self.store.position(channel)) is not None:
                sub.offset, sub.epoch = pos
            self._subs[channel] = sub
        if handler is not None:
            sub.on(None, handler)
        if on_reload is not None:
            sub.on_reload(on_reload)
        link = self._link
        if link is not None and not link.closed:
            try:
                await self._subscribe_on(link, sub, patient=True)
            except ServerError:
                self._subs.pop(channel, None)
                raise
            except Disconnected:
                pass  # the supervisor subscribes again on the next connection
        return sub

    async def unsubscribe(self, channel: str) -> None:
        self._subs.pop(channel, None)
        link = self._link
        if link is not None and not link.closed:
            with contextlib.suppress(ClientError):
                await link.request("UNSUBSCRIBE", {"channel": channel}, timeout=self.request_timeout)

    async def _subscribe_on(self, link: Link, sub: Subscription, *, patient: bool = False) -> None:
        """SUBSCRIBE on ``link``. Its ACK sets the subscription's epoch and offset, whenever it
        comes: one later than the request timeout is still applied (``Link`` runs ``on_ack``),
        so events never arrive on a subscription that has no position to resume from. With
        ``patient`` a timeout on a live link keeps waiting for that ACK (a stalled path) until
        it arrives or the link drops (the keepalive bounds that)."""
        since = {"offset": sub.offset, "epoch": sub.epoch} if sub.offset is not None and sub.epoch else None
        data: dict[str, Any] = {"channel": sub.channel}
        if since is not None:
            data["since"] = since
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        in_dispatcher = asyncio.current_task() is self._dispatcher
        try:
            await link.request("SUBSCRIBE", data, timeout=self.request_timeout,
                               on_ack=lambda ack: self._queue.put_nowait(("ack", sub.channel, ack, since, done)))
        except Disconnected:
            if not patient or link.closed or in_dispatcher:
                raise
            log.warning("SUBSCRIBE %s: no ACK within %g s; waiting for it", sub.channel, self.request_timeout)
            closed = asyncio.ensure_future(link.wait_closed())
            try:
                await asyncio.wait([done, closed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not done.done():
                raise
        if not in_dispatcher:
            # Called from a handler (subscribe or refresh inside a handler), the dispatcher
            # cannot reach the ACK until that handler returns: waiting would deadlock delivery.
            await done  # the replayed events have reached the app

    async def _refused(self, sub: Subscription, error: ServerError) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        if not self._subscribe_error_listeners:
            log.warning("subscription to %s refused: %s", sub.channel, error)
        for cb in list(self._subscribe_error_listeners):
            try:
                await _call(cb, sub.channel, error)
            except Exception:
                log.exception("subscribe error callback failed")

    @staticmethod
    async def _quietly(aw: Awaitable[Any]) -> None:
        try:
            await aw
        except ClientError as exc:  # the next connection resubscribes anyway
            log.info("background request failed: %s", exc)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        self._queue.put_nowait(("event", frame))

    # -- dispatch: exactly once, in order -----------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if item[0] == "event":
                    await self._event(item[1])
                else:
                    await self._ack(*item[1:])
            except Exception:
                log.exception("dispatch failed")
            finally:
                if item[0] == "ack" and not item[4].done():
                    item[4].set_result(None)

    async def _event(self, frame: dict[str, Any], replayed: bool = False) -> None:
        """``replayed``: from an ACK's publications, which hold exactly the missed events this
        connection may see (on a channel that filters per recipient their offsets can have
        gaps): no hole check."""
        channel, offset = frame.get("channel"), frame.get("offset")
        sub = self._subs.get(channel) if isinstance(channel, str) else None
        if sub is None or not isinstance(offset, int):
            await self._deliver(None, frame)
            return
        if sub.offset is not None:
            if offset <= sub.offset:
                return  # already delivered (a replay overlapping live delivery)
            if offset > sub.offset + 1 and not replayed and not sub.filtered:
                # A hole: recover it rather than deliver out of order.
                link = self._link
                if link is not None:
                    asyncio.ensure_future(self._quietly(self._subscribe_on(link, sub)))
                return
        await self._deliver(sub, frame)
        sub.offset = offset
        if sub.epoch is not None:
            self.store.set_position(sub.channel, offset, sub.epoch)

    async def _ack(self, channel: str, ack: dict[str, Any], since: dict[str, Any] | None, done: Any) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        offset, epoch = int(ack["offset"]), str(ack["epoch"])
        sub.filtered = ack.get("filtered") is True
        if since is not None and not ack.get("recovered"):
            # History no longer covers the gap: never pretend; the app reloads.
            sub.offset, sub.epoch = offset, epoch
            self.store.set_position(channel, offset, epoch)
            self.store.clear_events(channel)
            for cb in [*sub.reload_handlers, *self._reload_listeners]:
                try:
                    await _call(cb, channel)
                except Exception:
                    log.exception("reload callback failed")
            return
        sub.epoch = epoch
        if since is None:
            sub.offset = max(sub.offset or 0, offset)
        else:
            for event in ack.get("publications") or ():
                await self._event(event, replayed=True)
            sub.offset = max(sub.offset or 0, offset)
        self.store.set_position(channel, sub.offset, epoch)

    async def _deliver(self, sub: Subscription | None, event: dict[str, Any]) -> None:
        if sub is not None:
            self.store.add_event(event)
        etype = event.get("type")
        handlers: list[Handler] = []
        if sub is not None:
            handlers += sub.handlers.get(etype, []) + sub.handlers.get(None, [])
        handlers += self._handlers.get(etype, []) + self._handlers.get(None, [])
        for handler in handlers:
            try:
                await _call(handler, event)
            except Exception:
                log.exception("handler for %s failed", etype)

    # -- writes --------------------------------------------------------------------------------

    def _queue_write(self, kind: str, target: str, payload: dict[str, Any]) -> Write:
        entry = self.outbox.add(kind, target, payload)  # durable before we return
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # awaiting it is optional
        self._writes[entry.seq] = fut
        self._drained.clear()
        self._kick.set()
        self.store.changed(_key(kind, target))
        return Write(entry, fut)

    async def publish(self, channel: str, data: Any) -> Write:
        """Queue a publication; it is in the SQLite outbox when this returns."""
        return self._queue_write("publish", channel, {"data": data})

    async def enqueue(self, method: str, path: str, json: Any = None) -> Write:
        """Queue any REST write (``POST /api/sessions/{id}/messages`` …): durable, in order with
        the other writes, sent with its outbox id as ``Idempotency-Key``."""
        return self._queue_write("http", path, {"method": method.upper(), "json": json})

    async def request(self, type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """One WebSocket request (``UPDATE_PROGRESS`` …), online only: raises ``Disconnected`` offline."""
        link = self._link
        if link is None or link.closed:
            raise Disconnected("offline")
        return await link.request(type, data or {}, timeout=self.request_timeout)

    async def flush(self, timeout: float = 30) -> None:
        """Wait until every queued write has been answered (sent, or refused and rolled back)."""
        async def drained() -> None:
            while len(self.outbox):
                self._kick.set()
                self._drained.clear()
                await self._drained.wait()
        await asyncio.wait_for(drained(), timeout)

    async def refresh(self, timeout: float = 30) -> None:
        """A manual sync: send the outbox, catch up every subscription, reload cached documents."""
        if self._link is None:
            raise Disconnected("offline: refresh needs a connection")
        await self.flush(timeout)
        link = self._link
        if link is None:
            raise Disconnected("offline: refresh needs a connection")
        for sub in list(self._subs.values()):
            await self._subscribe_on(link, sub)
        for (collection, doc_id) in self.db.execute("SELECT collection, id FROM documents").fetchall():
            await self.documents(collection).fetch(doc_id)
        self.last_synced_at = time.time()

    async def _flush(self) -> None:
        retry = Backoff(base=0.2, cap=10, max_attempts=None)
        while True:
            await self._kick.wait()
            self._kick.clear()
            while not self._closing:
                await self._online.wait()
                granted, wait = self.pacer.take(self._window)
                if not granted:
                    await asyncio.sleep(wait)
                    continue
                batch = self.outbox.pending(granted)
                if not batch:
                    self.pacer.tokens += granted
                    self._window = self.batch_size
                    self.last_synced_at = time.time()
                    self._drained.set()
                    break
                self.pacer.tokens += granted - len(batch)
                again = await self._send(batch)
                if again:
                    if self.state == "failed":
                        return
                    delay = retry.next() or 0.0
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), delay)
                    self._kick.clear()
                else:
                    retry.reset()

    async def _send(self, batch: list[Entry]) -> bool:
        """Send the leading run of same-transport entries; True when some must be retried."""
        if batch[0].kind == "publish":
            run = []
            for e in batch:
                if e.kind != "publish":
                    break
                run.append(e)
            link = self._link
            if link is None:
                return True
            try:
                results = await link.requests(
                    [("PUBLISH", {"channel": e.target, "data": e.payload["data"], "idempotency_key": e.key}, None)
                     for e in run], timeout=self.request_timeout)
            except Disconnected:
                return True
        else:
            run, results = [batch[0]], []
            try:
                if batch[0].kind == "http":
                    p = batch[0].payload
                    results.append(await self.rest(p["method"], batch[0].target, p["json"],
                                                   headers={"Idempotency-Key": batch[0].key}))
                else:
                    results.append(await self._send_write(batch[0]))
            except ClientError as exc:
                results.append(exc)
        again = False
        for entry, result in zip(run, results):
            if not isinstance(result, BaseException):
                self._settle(entry, result)
                continue
            action = getattr(result, "action", "retry")
            if action == "reject" and isinstance(result, ServerError):
                await self._reject(entry, result)
            elif action == "reauth":
                again = True
                if not await self._reauth():
                    self._fail(result)
                elif self._link is not None:
                    self._link.abort()  # reconnect with the new token
            else:
                again = True
                if isinstance(result, ServerError):  # refused for now (rate limit, 5xx): a later
                    self._window = 1  # write of a batch could overtake it; stop-and-wait until drained
        return again

    def _settle(self, entry: Entry, result: Any) -> None:
        self.outbox.remove(entry.seq)
        fut = self._writes.pop(entry.seq, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def _reject(self, entry: Entry, error: ServerError) -> None:
        """Roll back exactly this write (drop it from the outbox the view is replayed from) and say why."""
        self.outbox.remove(entry.seq)
        self.store.changed(_key(entry.kind, entry.target))
        fut = self._writes.pop(entry.seq, None)
        if fut is not None and not fut.done():
            fut.set_exception(error)
        if not self._error_listeners:
            log.warning("write %s to %s refused: %s", entry.kind, entry.target, error)
        for cb in list(self._error_listeners):
            try:
                await _call(cb, error, entry)
            except Exception:
                log.exception("error callback failed")

    # -- REST ----------------------------------------------------------------------------------

    async def rest(self, method: str, path: str, json: Any = None, *, headers: dict[str, str] | None = None,
                   allow_statuses: tuple[int, ...] = ()) -> Any:
        """One REST call with the current token; errors raised classified (``ServerError.action``)."""
        h = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        try:
            r = await self.http.request(method, self.url + path, json=json, headers=h)
        except httpx.HTTPError as exc:
            raise Disconnected(f"{method} {path}: {exc!r}") from None
        body: Any = None
        if r.content:
            try:
                body = r.json()
            except ValueError:
                body = None
        if r.status_code >= 400 and r.status_code not in allow_statuses:
            err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
            code = err.get("code") or ("unavailable" if r.status_code >= 500 else "bad_request")
            raise ServerError(code, err.get("message") or r.text[:200], r.status_code, err)
        return body if body is not None else {}

    # -- helpers (tether.client.helpers) --------------------------------------------------------

    async def _send_write(self, entry: Entry) -> Any:
        """Send an outbox entry of a kind this layer does not know (``Client`` adds documents)."""
        raise ClientError(f"no sender for outbox entries of kind {entry.kind!r}")
