"""CPU pinning for latency runs: the server(s) on one CPU, the load generator on the rest.

Unpinned, the scheduler moves the server and the load generator's processes
between the cores, and a latency window measures that shuffle as much as the
system. Pinned, each side has a core of its own, whatever ran before.

Linux affinity is per thread, so every thread of a process is pinned (a
server's SQLite worker thread too); threads started later inherit it from the
thread that starts them, and forked processes from their parent.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def plan() -> tuple[set[int], set[int]] | None:
    """(server CPUs, load-generator CPUs), or None when fewer than 2 CPUs are ours."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def children(pid: int) -> list[int]:
    """Direct child processes (e.g. worker processes a server forked)."""
    out: list[int] = []
    for t in threads(pid):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return out


def set_cpus(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` and of its child processes (a process that is gone is skipped)."""
    for child in children(pid):
        set_cpus(child, cpus)
    for tid in threads(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def pinned(server_pids: list[int], loadgen_pids: list[int], enabled: bool = True) -> Iterator[dict[str, list[int]] | None]:
    """Pin for the duration of the block; yields what was pinned where (None: not pinned).

    This process joins the load generator, so the processes it forks meanwhile
    (a publisher) start there. Afterwards every process gets all CPUs back."""
    p = plan() if enabled else None
    if p is None:
        yield None
        return
    server_cpus, loadgen_cpus = p
    everything = server_cpus | loadgen_cpus
    me = os.getpid()
    try:
        for pid in server_pids:
            set_cpus(pid, server_cpus)
        for pid in loadgen_pids:
            set_cpus(pid, loadgen_cpus)
        for tid in threads(me):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, loadgen_cpus)
        yield {"server_cpus": sorted(server_cpus), "loadgen_cpus": sorted(loadgen_cpus)}
    finally:
        for tid in threads(me):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, everything)
        for pid in server_pids + loadgen_pids:
            set_cpus(pid, everything)
