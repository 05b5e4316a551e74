"""Start each system under test as its own server process on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
NODE_PEER = PEERS / "socketio-node"

API_KEY = "bench-api-key"
SYSTEMS = ["tether", "websockets-broadcast", "python-socketio", "socket.io-node", "django-channels", "tether-redis",
           "seed-reference", "http-noop"]
# Systems of the ops workload only: Tether on PostgreSQL + Redis (presence and locks in Redis, like
# the REST peer's), and the REST peers, which serve some REST ops and nothing over WebSocket.
OPS_ONLY = {"tether-redis", "seed-reference", "http-noop"}


class Unavailable(Exception):
    """This system cannot run here (the message says why); the bench skips it."""


REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def scaled_env(tag: str) -> dict[str, str]:
    """Tether on PostgreSQL + Redis, in a schema and key prefix of its own (``tag``)."""
    from urllib.parse import urlsplit

    for url in (REDIS_URL, POSTGRES_URL):
        u = urlsplit(url)
        try:
            socket.create_connection((u.hostname or "127.0.0.1", u.port or 0), timeout=1).close()
        except OSError:
            raise Unavailable(f"{url} is not reachable (set BENCH_REDIS_URL / BENCH_POSTGRES_URL)") from None
    sep = "&" if "?" in POSTGRES_URL else "?"
    return {"TETHER_REDIS_URL": REDIS_URL, "TETHER_REDIS_PREFIX": f"{tag}:",
            "TETHER_DATABASE_URL": f"{POSTGRES_URL}{sep}schema={tag}"}


def drop_scaled(tag: str) -> None:
    """Remove the schema and Redis keys a :func:`scaled_env` run left."""
    import asyncio

    async def drop() -> None:
        import asyncpg
        import redis.asyncio

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        finally:
            await conn.close()
        r = redis.asyncio.from_url(REDIS_URL)
        try:
            keys = [k async for k in r.scan_iter(f"{tag}:*", count=1000)]
            for i in range(0, len(keys), 1000):
                await r.delete(*keys[i:i + 1000])
        finally:
            await r.aclose()

    asyncio.run(drop())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_node_peer() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise Unavailable("node/npm not found on PATH")
    if (NODE_PEER / "node_modules" / "socket.io").is_dir():
        return
    proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_PEER,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise Unavailable(f"npm install failed in {NODE_PEER}: {proc.stderr.strip()[-300:]}")


def redis_reachable() -> None:
    from urllib.parse import urlsplit

    u = urlsplit(REDIS_URL)
    try:
        socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1).close()
    except OSError:
        raise Unavailable(f"{REDIS_URL} is not reachable (set BENCH_REDIS_URL)") from None


def check(system: str) -> None:
    """Raise Unavailable when the system's dependencies are missing."""
    if system == "python-socketio":
        try:
            import socketio  # noqa: F401
        except ImportError:
            raise Unavailable("python-socketio is not installed: pip install -e '.[bench]'") from None
    elif system == "socket.io-node":
        ensure_node_peer()
    elif system == "tether-redis":
        scaled_env("check")  # raises Unavailable when PostgreSQL or Redis is not reachable
    elif system == "seed-reference":
        redis_reachable()
    elif system == "django-channels":
        try:
            import channels  # noqa: F401
            import channels_redis  # noqa: F401
            import django  # noqa: F401
        except ImportError:
            raise Unavailable("channels / channels-redis / django are not installed: pip install -e '.[bench]'") from None
        redis_reachable()


class Server:
    """One server process; ``env`` adds variables (e.g. Tether's Redis/PostgreSQL URLs)."""

    def __init__(self, system: str, env: dict[str, str] | None = None) -> None:
        self.system = system
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    **(env or {})}
        self.redis_prefix: str | None = None
        if system == "django-channels":  # its channel layer's keys, deleted by stop() even after a SIGKILL
            self.redis_prefix = self.env["BENCH_DC_PREFIX"] = f"bench_dc_{os.getpid()}_{self.port}_{time.time_ns() % 10**9}"
        self._spawn()

    def _spawn(self) -> None:
        system = self.system
        py = sys.executable
        p = str(self.port)
        # Limits raised so the bench measures throughput, not the abuse guards.
        tether = [py, "-m", "tether", "serve", "--port", p, "--data-dir", str(self.dir),
                  "--rate-per-connection", "1e9", "--rate-burst", "1000000000", "--rate-per-user", "1e9",
                  "--rest-rate-per-user", "1e9", "--rest-rate-burst", "1000000000",
                  "--api-key", API_KEY, "--log-level", "warning"]
        cmd = {
            "tether": tether,
            "tether-redis": tether,  # with scaled_env() in ``env``
            "websockets-broadcast": [py, str(PEERS / "ws_broadcast.py"), p],
            "python-socketio": [py, str(PEERS / "socketio_py.py"), p],
            "socket.io-node": ["node", str(NODE_PEER / "server.js"), p],
            "django-channels": [py, "-m", "bench.peers.django_channels", p],  # its own Redis prefix
            "seed-reference": [py, str(PEERS / "rest_redis.py"), p],
            "http-noop": [py, str(PEERS / "http_noop.py"), p],
        }[system]
        self.log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.pid = self.proc.pid
        self._wait()
        self.profiler: subprocess.Popen[bytes] | None = None
        if os.environ.get("BENCH_PROFILE") and system != "socket.io-node":
            # py-spy attached to the server: collapsed stacks, summarized by bench/profile.py
            out = Path(os.environ["BENCH_PROFILE"]) / f"{system}-{os.environ.get('BENCH_WORKLOAD', 'run')}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            self.profiler = subprocess.Popen(["py-spy", "record", "--pid", str(self.pid), "--rate", "250", "--format", "raw",
                                              "--output", str(out), "--nonblocking"],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"{self.system} exited: {(self.dir / 'server.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                time.sleep(0.3)  # let the app finish its startup after binding
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise Unavailable(f"{self.system} did not listen within {timeout:.0f} s")

    def rss(self) -> int:
        return rss(self.pid)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run (what a crash looks like)."""
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def restart(self) -> None:
        """Start again on the same port and data directory, after :meth:`kill`."""
        self._spawn()

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait(30)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.redis_prefix:
            drop_redis_keys(self.redis_prefix)


def drop_redis_keys(prefix: str) -> None:
    """Delete every key under ``prefix`` (a peer's channel layer: groups, queues)."""
    import redis

    r = redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])
    finally:
        r.close()


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat: how close
    a run came to using every core, whoever used them (servers, load generator, Redis, …)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick
