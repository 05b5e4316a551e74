"""Load-generator processes: subscribers that count, one publisher that paces.

They talk to the orchestrator through shared memory only: ``totals[i]`` is
the deliveries process ``i`` has counted so far, ``ready`` counts connections
set up, ``phase`` says what to do (see ``Phase``), ``counting`` once set puts
every subscriber in counting mode for good (``bench.wire.Client.count_only``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from typing import Any

from bench.wire import DIALECTS, Client, connect, payload


class Phase:
    COUNT = 0  # count deliveries
    RECORD = 1  # count, and record each delivery's latency
    REPORT = 2  # send recorded latencies to the orchestrator, keep counting
    EXIT = 3


def _loop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def subscriber(system: str, idx: int, conns: list[tuple[str, list[str], int]], shared: Any) -> None:
    """Open ``conns`` (user, channels to join, server port), then count until told to exit."""
    _loop()
    asyncio.run(_subscriber(system, idx, conns, shared))


async def _subscriber(system: str, idx: int, conns: list[tuple[str, list[str], int]], shared: Any) -> None:
    dialect = DIALECTS[system]
    clients: list[Client] = []
    rooms: list[tuple[Client, str]] = []  # each connection with the channel it publishes to in the rooms workload
    gate = asyncio.Semaphore(64)

    async def open_one(user: str, channels: list[str], port: int) -> None:
        async with gate:
            for attempt in range(20):
                try:
                    c = await connect(dialect, port, user)
                    break
                except OSError:
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise ConnectionError(f"{system}: cannot connect {user}")
            clients.append(c)
            if channels:
                rooms.append((c, channels[0]))
            deadline = time.monotonic() + 30
            while not c.ready and time.monotonic() < deadline and not c.closed:
                await asyncio.sleep(0.01)
            for rid, ch in enumerate(channels, 1):
                c.send(dialect.subscribe(ch, rid))
            while c.acks < len(channels) and time.monotonic() < deadline and not c.closed:
                await asyncio.sleep(0.01)
            with shared.ready.get_lock():
                shared.ready.value += 1

    await asyncio.gather(*(open_one(u, chs, port) for u, chs, port in conns))
    members = asyncio.ensure_future(_members(dialect, idx, rooms, shared))
    recording = counting = False
    while True:
        await asyncio.sleep(0.01)
        if shared.counting.value and not counting:  # a throughput phase: count, walk no frames
            counting = True
            for c in clients:
                c.count_only()
        shared.totals[idx] = sum(c.delivered for c in clients)
        shared.closed[idx] = sum(c.closed for c in clients)
        phase = shared.phase.value
        if phase == Phase.RECORD and not recording:
            recording = True
            for c in clients:
                c.latencies = []
        elif phase == Phase.REPORT and recording:
            recording = False
            out = array("d")
            for c in clients:
                out.extend(c.latencies or ())
                c.latencies = None
            shared.results.put((idx, out.tobytes()))
        elif phase == Phase.EXIT:
            break
    members.cancel()
    for c in clients:
        if c.transport is not None:
            c.transport.close()


async def _members(dialect: Any, idx: int, mine: list[tuple[Client, str]], shared: Any) -> None:
    """The rooms workload: every member publishes to its own room (its first channel).

    ``member_rate`` > 0: each member that many publishes per second, on a fixed schedule
    (this process's members in turn). ``member_saturate``: as fast as the system absorbs
    them, with at most ``member_budget`` deliveries published but not yet counted (each
    publish is delivered to the ``member_fan`` members of its room, the sender included).
    """
    if not mine:
        return
    sent = i = 0
    start: float | None = None
    base = 0
    while True:
        rate = shared.member_rate.value
        if rate > 0:
            if start is None:
                start, base = time.monotonic(), sent
            due = start + (sent - base) / (rate * len(mine))
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif shared.member_saturate.value:
            start = None
            expected = sum(shared.member_sent) * shared.member_fan.value
            if expected - sum(shared.totals) >= shared.member_budget.value:
                await asyncio.sleep(0.002)  # the members are catching up
                continue
        else:
            start = None
            await asyncio.sleep(0.01)
            continue
        c, room = mine[i]
        i = (i + 1) % len(mine)
        if c.closed:
            continue
        sent += 1
        c.send(dialect.publish(room, payload(), sent))
        shared.member_sent[idx] = sent
        if sent % 32 == 0:
            await asyncio.sleep(0)


def publisher(system: str, port: int, plan: list[tuple[str, int]], rate: float, budget: int, shared: Any) -> None:
    """Publish ``plan`` round-robin, (channel, deliveries it causes) per step.

    ``rate`` > 0: that many publishes per second, on a fixed schedule.
    ``rate`` == 0: as fast as the system absorbs them: at most ``budget``
    deliveries published but not yet counted by the subscribers, and at most
    64 publishes awaiting their ACK, so no queue grows without bound.
    """
    _loop()
    asyncio.run(_publisher(system, port, plan, rate, budget, shared))


async def _publisher(system: str, port: int, plan: list[tuple[str, int]], rate: float, budget: int, shared: Any) -> None:
    dialect = DIALECTS[system]
    c = await connect(dialect, port, "publisher")
    while not c.ready and not c.closed:
        await asyncio.sleep(0.01)
    acked = asyncio.Event()
    c.on_ack = acked.set
    sent = expected = i = 0
    n = len(plan)
    totals = shared.totals
    base = sum(totals)
    start = time.monotonic()
    while not shared.stop.value and not c.closed:
        if rate > 0:
            due = start + sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            ch, _ = plan[i]
            sent += 1
            c.send(dialect.publish(ch, payload(), sent))
            i = (i + 1) % n
            continue
        delivered = sum(totals) - base
        burst = 0
        while burst < 32 and sent - c.acks < 64 and expected - delivered < budget:
            ch, fan = plan[i]
            sent += 1
            expected += fan
            burst += 1
            c.send(dialect.publish(ch, payload(), sent))
            i = (i + 1) % n
        if burst:
            await asyncio.sleep(0)
        elif sent - c.acks >= 64:  # wait for an ACK (a timer under 1 ms would spin: libuv timers count ms)
            acked.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(acked.wait(), 1)
        else:  # over budget: the subscribers are catching up
            await asyncio.sleep(0.002)
    shared.published.value = sent
    if c.transport is not None:
        c.transport.close()
