"""Graceful drain: what a node does between SIGTERM and its exit (code 0).

1. The node is marked draining: ``/healthz`` answers 503 (load balancers stop
   sending it traffic) and new WebSocket upgrades are refused with 503.
2. After ``drain_delay`` seconds, every connection has its requests in flight
   answered (up to :data:`HAND_OVER` seconds), then gets close code 1012
   (service restart): clients reconnect at once, with jitter, to another
   node, and resume from their offsets. A connection whose handshake was
   already under way is closed the same way as soon as it opens.
3. Once no connection is left, uvicorn's own shutdown runs: listeners close,
   HTTP requests in flight finish, then the node stops (group commits are
   flushed, storage and Redis closed).
4. The process exits with code 0, within ``drain_timeout`` seconds of the
   signal: a shutdown step still waiting a second before the bound is
   abandoned (logged with what it waits for). Should even that not return,
   a watchdog ends the process with code 1 at the bound, listing the tasks
   still running. A second signal stops at once (uvicorn's shutdown, as before).

SIGINT (Ctrl-C) drains the same way, so a node stopped by hand loses nothing either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn

from tether.core.connection import Connection
from tether.core.node import Node
from tether.wire.protocol import CLOSE_RESTART

log = logging.getLogger("tether.drain")

RESTART_REASON = "service restart: reconnect now, elsewhere, with jitter"
HAND_OVER = 2.0  # seconds a connection's requests in flight get to be answered before its 1012
SHUTDOWN_SHARE = 0.3  # of drain_timeout, kept for uvicorn's shutdown and the node's stop


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, node: Node, drain_timeout: float, drain_delay: float) -> None:
        super().__init__(config)
        self.node = node
        self.drain_timeout = drain_timeout
        self.drain_delay = drain_delay
        self.drained = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._draining = False
        self._deadline = 0.0

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self._draining and not self.should_exit
        if sig in (signal.SIGTERM, signal.SIGINT) and first and self.started and self._loop is not None:
            self._draining = True
            self._loop.call_soon_threadsafe(self._begin)  # safe from a signal handler
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown (requests in flight, then the node's stop), within the drain's bound."""
        if not self.drained:
            return await super().shutdown(sockets)
        left = max(0.5, self._deadline - asyncio.get_running_loop().time() - 1.0)
        try:
            await asyncio.wait_for(asyncio.shield(super().shutdown(sockets)), left)
        except asyncio.TimeoutError:
            log.error("shutdown overran the drain bound; exiting anyway. Still running: %s",
                      "; ".join(_where(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()))

    def _begin(self) -> None:
        self._drain = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        node = self.node
        node.draining = True
        self._deadline = loop.time() + self.drain_timeout
        _watchdog(self.drain_timeout, loop)
        closing_until = loop.time() + self.drain_timeout * (1 - SHUTDOWN_SHARE)
        log.warning("draining: /healthz answers 503; closing %d connections with 1012 in %g s",
                    len(node.connections), self.drain_delay)
        await asyncio.sleep(min(self.drain_delay, self.drain_timeout / 2))
        handing: dict[Connection, asyncio.Task[None]] = {}
        while node.connections and loop.time() < closing_until:
            for conn in list(node.connections.values()):
                if conn not in handing and conn.close_code is None:
                    handing[conn] = asyncio.ensure_future(_hand_over(conn, closing_until))
            await asyncio.sleep(0.05)
        log.warning("drained: %d connections closed, %d left; finishing requests in flight",
                    len(handing), len(node.connections))
        # uvicorn then waits for requests in flight; what is left of the bound, minus time for node.stop()
        left = closing_until - loop.time() + self.drain_timeout * SHUTDOWN_SHARE
        self.config.timeout_graceful_shutdown = max(0.5, left * 0.6)
        self.drained = True
        self.should_exit = True


async def _hand_over(conn: Connection, until: float) -> None:
    """Answer what the client already sent, then close with 1012. A publish answered before the
    close is not sent again by the client elsewhere, where it could race its own first copy."""
    wait = min(HAND_OVER, until - asyncio.get_running_loop().time())
    try:
        await asyncio.wait_for(conn.settle(), max(0.05, wait))
    except asyncio.TimeoutError:
        pass
    except Exception:  # settle re-raises nothing of its requests; a broken one must not keep the others
        log.exception("settling connection %s failed", conn.id)
    conn.close(CLOSE_RESTART, RESTART_REASON)


def _where(task: "asyncio.Task[Any]") -> str:
    frames = task.get_stack(limit=3)
    return f"{task.get_name()} at " + " < ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)


def _watchdog(bound: float, loop: asyncio.AbstractEventLoop) -> None:
    def overrun() -> None:
        sys.stderr.write(f"tether: drain overran its bound of {bound:g} s (--drain-timeout); exiting with code 1; "
                         "still running:\n")
        try:  # best effort, from another thread: what the node was waiting for
            for task in list(asyncio.all_tasks(loop)):
                task.print_stack(limit=8, file=sys.stderr)
        except Exception:
            pass
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(bound, overrun)
    timer.daemon = True
    timer.start()


def run(app: Any, *, drain_timeout: float, drain_delay: float, **options: Any) -> None:
    """``uvicorn.run(app, **options)``, except that SIGTERM drains the node first."""
    config = uvicorn.Config(app, **options)
    server = DrainingServer(config, app.state.node, drain_timeout, drain_delay)
    server.run()
    if not server.started:  # uvicorn has logged why
        # Exit now, with uvicorn's STARTUP_FAILURE code: a thread a failed start left running
        # (a database driver's, a client's) must not keep the process alive.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)
