"""The chaos harness: Python clients behind fault-injecting proxies, a workload in which
every event can be accounted for, faults at random (seeded) moments, and the audit.

- :class:`Peer`: one ``tether.client.Client`` whose every connection, to every node,
  goes through a :class:`~tests.faultproxy.FaultProxy` of its own, so a fault hits one
  client's link and nothing else.
- :class:`Workload`: writers publish ``{"w": writer, "n": n}`` (``n`` counting up per
  writer) to a few channels through their outbox; readers subscribe to every channel.
- :class:`LinkChaos`, :func:`backend_link_chaos`, :func:`run_chaos`: the faults.
- :meth:`Workload.settle` then :func:`audit`: once the faults stop, every event must be
  in the channel's history once, in each writer's order, and every reader must have
  seen that history exactly, in offset order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Awaitable, Callable

import httpx
import websockets

from tests.faultproxy import FaultProxy, Link
from tests.helpers import API_KEY, ServerProcess
from tests.services import unique
from tether.client import Backoff, Client
from tether.wire.jsonutil import dumps, loads

# What every server of the suite runs with: a 1 s ping interval, so a half-open or stalled
# link is given up within 2 s by both ends, and a history window that holds the whole run,
# so a client that recovers is never told its history is gone (any reload is a finding).
SERVER_ARGS = ("--ping-interval", "1", "--history-size", "100000")

Actor = Callable[[asyncio.Event], Awaitable[None]]


class Faults(collections.Counter):  # type: ignore[type-arg]
    """Faults injected, by kind."""

    @property
    def total(self) -> int:
        return sum(self.values())

    def line(self) -> str:
        kinds = ", ".join(f"{kind}={n}" for kind, n in self.items())
        return f"faults={self.total} ({kinds})"


class Peer:
    """A client of the workload: a writer or a reader, each link through its own proxy."""

    def __init__(self, name: str, proxies: list[FaultProxy], rng: random.Random) -> None:
        self.name = name
        self.proxies = proxies
        self.client = Client([f"http://127.0.0.1:{p.port}" for p in proxies], f"{name}:chaos",
                             backoff=Backoff(base=0.02, cap=0.2, max_attempts=None, random=rng.random),
                             request_timeout=5)
        self.seen: dict[str, list[tuple[int, Any]]] = collections.defaultdict(list)  # channel -> (offset, data)
        self.reloads = 0
        self.refused = 0
        self.writes: list[tuple[Any, str, int]] = []  # (Write, channel, n)
        self.client.on_reload(self._reloaded)
        self.client.on_error(self._refused)

    def _reloaded(self, channel: str) -> None:
        self.reloads += 1

    def _refused(self, error: Any, entry: Any) -> None:
        self.refused += 1

    def healthy_links(self) -> list[Link]:
        return [link for proxy in self.proxies for link in proxy.links if link.healthy]

    def last_offset(self, channel: str) -> int:
        seen = self.seen.get(channel)
        return seen[-1][0] if seen else 0

    def record(self, event: dict[str, Any]) -> None:
        self.seen[event["channel"]].append((event["offset"], event["data"]))


class WireReader:
    """A reader that speaks the wire protocol itself and keeps every event frame it gets.
    ``tether.client`` drops an offset it already delivered, which would hide a server that
    sends an event twice; this reader drops nothing. It reconnects (to the next node) after
    any drop and resubscribes each channel with ``since`` its last offset."""

    def __init__(self, name: str, proxies: list[FaultProxy], rng: random.Random, channels: list[str]) -> None:
        self.name, self.proxies, self.rng, self.channels = name, proxies, rng, channels
        self.seen: dict[str, list[tuple[int, Any]]] = collections.defaultdict(list)
        self.position: dict[str, tuple[int, str]] = {}
        self.reloads = 0
        self.subscribed = asyncio.Event()  # every channel subscribed once
        self._task: asyncio.Task[None] | None = None

    healthy_links = Peer.healthy_links
    last_offset = Peer.last_offset

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        node = 0
        while True:
            proxy = self.proxies[node % len(self.proxies)]
            node += 1
            try:
                ws = await websockets.connect(f"ws://127.0.0.1:{proxy.port}/ws?token={self.name}:wire", open_timeout=3,
                                              ping_interval=None, close_timeout=0.5, max_size=None)
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake):
                await asyncio.sleep(self.rng.uniform(0, 0.2))
                continue
            try:
                await self._session(ws)
            except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                ws.transport.abort()
            await asyncio.sleep(self.rng.uniform(0, 0.05))

    async def _session(self, ws: Any) -> None:
        hello = loads(await asyncio.wait_for(ws.recv(), 3))
        if hello.get("type") != "CONNECTED":
            raise ConnectionError(f"expected CONNECTED, got {hello}")
        asked: dict[str, dict[str, Any] | None] = {}
        for channel in self.channels:
            data: dict[str, Any] = {"channel": channel}
            if channel in self.position:
                offset, epoch = self.position[channel]
                data["since"] = asked[channel] = {"offset": offset, "epoch": epoch}
            else:
                asked[channel] = None
            await ws.send(dumps({"type": "SUBSCRIBE", "data": data, "id": channel}))
        acked = 0
        while True:
            # The server PINGs every second: two seconds of silence is a dead link.
            frame = loads(await asyncio.wait_for(ws.recv(), 2))
            ftype, data = frame.get("type"), frame.get("data") or {}
            if ftype == "PING":
                await ws.send(dumps({"type": "PONG", "data": {"timestamp": data.get("timestamp")}}))
            elif ftype == "ACK" and frame.get("id") in asked:
                channel = frame["id"]
                if asked[channel] is not None and not data.get("recovered"):
                    self.reloads += 1
                for event in data.get("publications") or ():
                    self._record(event)
                self.position[channel] = (max(self.position.get(channel, (0, ""))[0], int(data["offset"])),
                                          str(data["epoch"]))
                acked += 1
                if acked == len(self.channels):
                    self.subscribed.set()
            elif ftype == "ERROR":
                raise ConnectionError(f"refused: {data}")  # reconnect and try again
            elif isinstance(frame.get("offset"), int) and frame.get("channel") in self.position:
                self._record(frame)

    def _record(self, event: dict[str, Any]) -> None:
        channel = event["channel"]
        self.seen[channel].append((event["offset"], event["data"]))
        epoch = self.position.get(channel, (0, ""))[1]
        self.position[channel] = (event["offset"], epoch)


class Workload:
    def __init__(self, rng: random.Random, upstream_ports: list[int], *, writers: int = 3, readers: int = 3,
                 channels: int = 3, wire_readers: int = 1, pace: float = 0.03) -> None:
        self.rng = rng
        self.upstream_ports = upstream_ports
        self.channels = [unique(f"public.chaos{i}-") for i in range(channels)]
        self.pace = pace  # mean seconds between two publishes of one writer
        self.expected: dict[str, dict[str, list[int]]] = {c: collections.defaultdict(list) for c in self.channels}
        self.writers = [f"writer{i}" for i in range(writers)]
        self.readers = [f"reader{i}" for i in range(readers)]
        self.wire_count = wire_readers
        self.peers: list[Peer] = []
        self.wire_readers: list[WireReader] = []
        self._writing: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def proxies(self) -> list[FaultProxy]:
        return [p for peer in self.linked for p in peer.proxies]

    @property
    def linked(self) -> list[Peer | WireReader]:
        """Everyone with links to fault."""
        return [*self.peers, *self.wire_readers]

    @property
    def all_readers(self) -> list[Peer | WireReader]:
        return [peer for peer in self.peers if peer.name in self.readers] + self.wire_readers

    async def start(self) -> "Workload":
        for name in self.writers + self.readers:
            proxies = [await FaultProxy(port).start() for port in self.upstream_ports]
            self.peers.append(Peer(name, proxies, random.Random(self.rng.random())))
        for peer in self.peers:
            await peer.client.connect()
        for peer in self.peers:
            if peer.name in self.readers:
                for channel in self.channels:
                    await peer.client.subscribe(channel, peer.record)
        for i in range(self.wire_count):
            proxies = [await FaultProxy(port).start() for port in self.upstream_ports]
            wire = WireReader(f"wire{i}", proxies, random.Random(self.rng.random()), self.channels)
            self.wire_readers.append(wire)
            wire.start()
            await asyncio.wait_for(wire.subscribed.wait(), 10)
        for peer in self.peers:
            if peer.name in self.writers:
                self._writing.append(asyncio.create_task(self._write(peer, random.Random(self.rng.random()))))
        return self

    async def _write(self, peer: Peer, rng: random.Random) -> None:
        """Publishes in small bursts (so the outbox often sends several at once), ``pace``
        seconds apart on average."""
        n = 0
        while not self._stop.is_set():
            burst = rng.choice((1, 1, 1, 2, 3, 6, 12))
            for _ in range(burst):
                n += 1
                channel = rng.choice(self.channels)
                self.expected[channel][peer.name].append(n)
                write = await peer.client.publish(channel, {"w": peer.name, "n": n})
                peer.writes.append((write, channel, n))
            await asyncio.sleep(rng.uniform(0, 2 * self.pace * burst))

    @property
    def published(self) -> int:
        return sum(len(peer.writes) for peer in self.peers)

    async def stop_writing(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._writing)

    def heal(self) -> None:
        """No more faults on the clients' links: stalled ones flow, half-open ones are reset."""
        for proxy in self.proxies:
            for link in list(proxy.links):
                if link.black_hole:
                    link.reset()
                else:
                    link.resume()

    async def settle(self, server_url: str, timeout: float = 30) -> dict[str, list[dict[str, Any]]]:
        """Every outbox sent, each channel's history read (straight from a server), then up to
        ``timeout`` for the readers to reach the end of it. Returns the histories."""
        await self.stop_writing()
        self.heal()
        for peer in self.peers:
            if peer.name in self.writers:
                with contextlib.suppress(asyncio.TimeoutError):
                    await peer.client.flush(timeout)
        histories = {channel: await read_history(server_url, channel) for channel in self.channels}
        deadline = time.monotonic() + timeout
        readers = self.all_readers
        while time.monotonic() < deadline:
            if all(peer.last_offset(c) >= len(h) for peer in readers for c, h in histories.items()):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything a reader would still (wrongly) receive shows up as a duplicate
        return histories

    async def close(self) -> None:
        self._stop.set()
        for task in self._writing:
            task.cancel()
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await peer.client.close()
        for wire in self.wire_readers:
            await wire.stop()
        for proxy in self.proxies:
            await proxy.close()


async def read_history(server_url: str, channel: str) -> list[dict[str, Any]]:
    """A channel's whole stored history, over the server API, oldest first."""
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=server_url, headers={"X-API-Key": API_KEY}, timeout=10) as http:
        since = 0
        while True:
            r = await http.get(f"/api/admin/channels/{channel}/history", params={"since": since, "limit": 1000})
            r.raise_for_status()
            body = r.json()
            out += body["publications"]
            if not body["publications"] or body["publications"][-1]["offset"] >= body["offset"]:
                return out
            since = body["publications"][-1]["offset"]


# -- faults ---------------------------------------------------------------------------------


class LinkChaos:
    """Faults on the clients' links, one every few tens of milliseconds: mostly resets, some
    half-open links and stalls (most longer than the client's keepalive, so it gives the link
    up; some shorter, so frames arrive late on a link that survives)."""

    KINDS = ("resets", "half_open", "stalls")

    def __init__(self, rng: random.Random, peers: list[Any], faults: Faults, *, every: tuple[float, float] = (0.003, 0.04),
                 weights: tuple[int, int, int] = (90, 4, 6)) -> None:
        self.rng, self.peers, self.faults, self.every, self.weights = rng, peers, faults, every, weights
        self._timers: set[asyncio.Task[None]] = set()

    async def __call__(self, stop: asyncio.Event) -> None:
        rng = self.rng
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(*self.every))
            kind = rng.choices(self.KINDS, self.weights)[0]
            linked = [links for peer in self.peers if (links := peer.healthy_links())]
            if not linked:
                continue  # every client is between connections: nothing to fault
            link = rng.choice(rng.choice(linked))
            if kind == "resets":
                link.reset()
            elif kind == "half_open":
                link.half_open()
            else:
                link.stall()
                seconds = rng.uniform(2.5, 4.0) if rng.random() < 0.7 else rng.uniform(0.2, 1.5)
                timer = asyncio.create_task(self._resume(link, seconds))
                self._timers.add(timer)
                timer.add_done_callback(self._timers.discard)
            self.faults[kind] += 1
        for timer in list(self._timers):
            timer.cancel()

    @staticmethod
    async def _resume(link: Link, seconds: float) -> None:
        await asyncio.sleep(seconds)
        link.resume()


def backend_link_chaos(name: str, proxy: FaultProxy, rng: random.Random, faults: Faults, *,
                       every: tuple[float, float] = (0.4, 1.2), stall: tuple[float, float] = (0.2, 1.0)) -> Actor:
    """Faults on a node's link to a backend (Redis, PostgreSQL): every connection through
    ``proxy`` reset at once; or stalled briefly, then flowing again; or stalled, then reset
    (what was sent during the stall never arrives: a path that went silent, then dropped)."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(*every))
            kind = rng.choices(("resets", "stalls", "stall_resets"), (4, 3, 3))[0]
            if kind == "resets":
                if proxy.cut_all():
                    faults[f"{name}_resets"] += 1
                continue
            proxy.stall_all()
            await asyncio.sleep(rng.uniform(*stall))
            if kind == "stall_resets":
                proxy.stalling = False
                if proxy.cut_all():
                    faults[f"{name}_stall_resets"] += 1
            elif proxy.links:
                faults[f"{name}_stalls"] += 1
            proxy.resume_all()
        proxy.resume_all()

    return run


async def start_server(server: ServerProcess, tries: int = 3) -> None:
    """(Re)start a server without blocking the event loop the clients and proxies run on."""
    for attempt in range(tries):
        try:
            await asyncio.to_thread(server.start)
            return
        except RuntimeError:
            server.kill()
            if attempt == tries - 1:
                raise


async def run_chaos(seconds: float, *actors: Actor) -> None:
    """Run the actors for ``seconds``; then they finish the fault in progress (a restart) and stop."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(actor(stop)) for actor in actors]
    try:
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # an actor that crashed fails the test now
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


# -- the audit ----------------------------------------------------------------------------


@dataclass
class Audit:
    events: int = 0
    deliveries: int = 0  # events the readers got (tether.client readers and wire readers)
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    holes: int = 0  # offsets of the history with no event
    mismatched: int = 0  # an event a reader saw, or a publish was acknowledged with, differs from history
    reloads: int = 0  # recovered: false although the history held everything
    refused: int = 0  # writes the server refused for good (dropped from the outbox)
    unanswered: int = 0  # writes still without an answer after the settle
    # Publishes answered {"applied": true} instead of their offset: a record committed without the
    # answer (the embedded broker stores the offset with the event, the Redis one marks it: none).
    applied_without_offset: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.holes or self.mismatched
                    or self.reloads or self.refused or self.unanswered or self.applied_without_offset)

    def note(self, text: str) -> None:
        if len(self.details) < 20:
            self.details.append(text)

    def line(self, name: str, faults: Faults) -> str:
        return (f"chaos {name}: {faults.line()} events={self.events} deliveries={self.deliveries} lost={self.lost} duplicated={self.duplicated} "
                f"out_of_order={self.out_of_order} holes={self.holes} mismatched={self.mismatched} "
                f"reloads={self.reloads} refused={self.refused} unanswered={self.unanswered} "
                f"applied_without_offset={self.applied_without_offset}")


def audit(work: Workload, histories: dict[str, list[dict[str, Any]]]) -> Audit:
    a = Audit()
    by_offset: dict[str, dict[int, Any]] = {}
    for channel, history in histories.items():
        a.events += len(history)
        offsets = [e["offset"] for e in history]
        top = offsets[-1] if offsets else 0
        if offsets != list(range(1, top + 1)):
            a.holes += top - len(set(offsets))
            a.note(f"{channel}: history offsets are not 1..{top}")
        by_offset[channel] = {e["offset"]: e["data"] for e in history}
        stored: dict[str, list[int]] = collections.defaultdict(list)
        at: dict[tuple[str, int], int] = {}
        for e in history:
            stored[e["data"]["w"]].append(e["data"]["n"])
            at[e["data"]["w"], e["data"]["n"]] = e["offset"]
        for writer in set(stored) | set(work.expected[channel]):
            got, want = stored[writer], work.expected[channel][writer]
            if got == want:
                continue
            lost = set(want) - set(got)
            a.lost += len(lost)
            a.duplicated += len(got) - len(set(got))
            a.out_of_order += sum(1 for x, y in pairwise(got) if y < x)
            a.mismatched += len(set(got) - set(want))
            inversions = [f"n={x}@{at[writer, x]} before n={y}@{at[writer, y]}" for x, y in pairwise(got) if y < x]
            a.note(f"{channel} {writer}: history lost {sorted(lost)[:10]} duplicated "
                   f"{sorted(n for n, k in collections.Counter(got).items() if k > 1)[:10]} inverted {inversions[:5]}")
        for peer in work.all_readers:
            seen = peer.seen.get(channel, [])
            a.deliveries += len(seen)
            seen_offsets = [o for o, _ in seen]
            missing = set(by_offset[channel]) - set(seen_offsets)
            dup = len(seen_offsets) - len(set(seen_offsets))
            disorder = sum(1 for x, y in pairwise(seen_offsets) if y < x)
            wrong = sum(1 for o, d in seen if by_offset[channel].get(o) != d)
            a.lost += len(missing)
            a.duplicated += dup
            a.out_of_order += disorder
            a.mismatched += wrong
            if missing or dup or disorder or wrong:
                a.note(f"{channel} {peer.name}: missed {sorted(missing)[:10]} dup={dup} disorder={disorder} wrong={wrong}")
    for wire in work.wire_readers:
        a.reloads += wire.reloads
    for peer in work.peers:
        a.reloads += peer.reloads
        a.refused += peer.refused
        for write, channel, n in peer.writes:
            if not write.done or write.future.cancelled():
                a.unanswered += 1
                continue
            if write.future.exception() is not None:
                continue  # refused: counted by the client's on_error
            answer = write.future.result()
            if answer == {"applied": True}:
                a.applied_without_offset += 1
                continue
            offset = answer.get("offset")
            if by_offset[channel].get(offset) != {"w": peer.name, "n": n}:
                a.mismatched += 1
                a.note(f"{peer.name} n={n} acknowledged at {channel}@{offset} ({write.future.result()}), "
                       f"which holds {by_offset[channel].get(offset)}")
    return a
