"""Before a node starts: refuse what cannot work, lock the data dir, print the banner.

Every refusal is one line that says what is wrong and what to do, and comes
before anything is created or opened, so a typo never leaves a stray data dir
or a half-started server with a traceback in its log.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
import socket
from pathlib import Path
from typing import IO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tether import __version__
from tether.core.auth import load_public_key
from tether.core.config import Settings, mask_url
from tether.core.namespaces import load_overrides
from tether.server import origins

POSTGRES_SCHEMES = ("postgres", "postgresql", "postgresql+asyncpg")
REDIS_SCHEMES = ("redis", "rediss", "unix")
CONNECT_TIMEOUT = 3.0  # seconds: a service that does not answer by then is reported unreachable
LOCK_FILE = "tether.lock"

_held: list[IO[str]] = []  # the data dir's lock lives as long as the process


class Refused(SystemExit):
    """A configuration that cannot work: one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refusing to start: {message}")
        self.reason = message  # what is wrong, for commands other than serve


mask = mask_url  # banners and messages show URLs with their secrets masked


def normalize_database_url(url: str | None) -> str | None:
    """``postgresql+asyncpg://`` (SQLAlchemy's spelling) is plain ``postgresql://``; other schemes are refused."""
    if not url:
        return None
    scheme = urlsplit(url).scheme.lower()
    if scheme not in POSTGRES_SCHEMES:
        raise Refused(
            f"--database-url scheme {scheme + '://' if scheme else repr(mask(url))} is not supported: "
            f"use postgresql://user:password@host:5432/db, or leave it unset for SQLite in --data-dir"
        )
    return "postgresql://" + url.split("://", 1)[1]


def check_redis_url(url: str | None) -> None:
    if url and urlsplit(url).scheme.lower() not in REDIS_SCHEMES:
        raise Refused(f"--redis-url {mask(url)!r} is not a Redis URL: use redis://host:6379/0 (or rediss:// for TLS)")


def check_data_dir(data_dir: Path) -> None:
    """The data dir is a directory we can write, or can be created as one."""
    path = data_dir.expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise Refused(f"--data-dir {data_dir} is a file, not a directory: pass a directory path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise Refused(f"--data-dir {data_dir} is not writable by this user: fix its permissions or pick another")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise Refused(f"--data-dir {data_dir} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        raise Refused(f"--data-dir {data_dir} cannot be created: {parent} is not writable; pick another --data-dir")


SQLITE_FILE = "tether.sqlite3"
SQLITE_HEADER = b"SQLite format 3\x00"


def check_database_file(data_dir: Path) -> None:
    """The data dir's database, if there is one yet, is an SQLite file we can read and write."""
    path = data_dir.expanduser().absolute() / SQLITE_FILE
    if not os.path.lexists(path):
        return
    where = data_dir / SQLITE_FILE
    if not path.is_file():
        raise Refused(f"{where} is not a file: move it away, or pick another --data-dir")
    if not os.access(path, os.R_OK | os.W_OK):
        raise Refused(f"{where} is not readable and writable by this user: fix its permissions")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:  # an empty file is a new database to SQLite
        raise Refused(f"{where} is not an SQLite database: move it away, or pick another --data-dir")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return True


def check_channels_file(path: Path | None) -> None:
    if path is None:
        return
    try:
        load_overrides(path)
    except SystemExit as exc:
        raise Refused(f"{exc.code}; see docs/protocol.md for its format") from None
    except (TypeError, ValueError, re.error) as exc:
        raise Refused(f"channels file {path}: {exc}") from None


def check_cors(settings: Settings) -> None:
    listed = origins.parse(settings.cors_origins)
    bad = origins.invalid(listed)
    if bad is not None:
        raise Refused(f"--cors-origins entry {bad[0]!r} {bad[1]}: write scheme://host[:port], e.g. https://app.example.com")
    if "*" in listed and (settings.auth or "dev") != "dev":
        raise Refused("--cors-origins '*' lets any web page use a signed-in user's token: list your app's origins instead")


def check_jwt(settings: Settings) -> None:
    """One way to check tokens, and a public key that loads."""
    if settings.jwt_secret and settings.jwt_public_key:
        raise Refused("both TETHER_JWT_SECRET (HS256) and TETHER_JWT_PUBLIC_KEY (RS256/ES256) are set: "
                      "pick one and unset the other")
    if settings.jwt_public_key:
        try:
            load_public_key(settings.jwt_public_key)
        except ValueError as exc:
            raise Refused(f"--jwt-public-key: {exc}; pass an RSA or EC public key in PEM, or its file") from None


def check_listen(host: str, port: int) -> None:
    """Nobody else listens on host:port (the bind that uvicorn makes next would fail)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Refused(f"--host {host} does not resolve ({exc.strerror}): pass an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Refused(f"{host}:{port} is already in use (another tether serve?): stop it or pass another --port") from None
            raise Refused(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --host or --port") from None


async def _reach_postgres(url: str) -> None:
    import asyncpg

    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k not in ("schema", "pool_min", "pool_max")}
    conn = await asyncpg.connect(urlunsplit(parts._replace(query=urlencode(query))), timeout=CONNECT_TIMEOUT)
    await conn.close()


async def _reach_redis(url: str) -> None:
    import redis.asyncio

    client = redis.asyncio.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()


def check_services(settings: Settings) -> None:
    for name, url, reach, flag in (("PostgreSQL", settings.database_url, _reach_postgres, "--database-url"),
                                   ("Redis", settings.redis_url, _reach_redis, "--redis-url")):
        if not url:
            continue
        try:
            asyncio.run(asyncio.wait_for(reach(url), CONNECT_TIMEOUT + 1))
        except Exception as exc:  # any failure to connect, authenticate or answer: say which and why
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Refused(f"cannot reach {name} at {mask(url)} ({reason}): start it, or fix {flag}") from None


def check(settings: Settings, *, listen: bool = True) -> None:
    """Everything that can be known before starting; raises :class:`Refused`."""
    if not 1 <= settings.port <= 65535:
        raise Refused(f"--port {settings.port} is outside 1-65535")
    settings.database_url = normalize_database_url(settings.database_url)
    check_redis_url(settings.redis_url)
    check_jwt(settings)
    check_cors(settings)
    if not settings.database_url:
        check_data_dir(settings.data_dir)
        check_database_file(settings.data_dir)
    check_channels_file(settings.channels_file)
    if listen:
        check_listen(settings.host, settings.port)
    check_services(settings)


def lock_data_dir(settings: Settings) -> None:
    """Hold an exclusive lock on the data dir for the life of this process.

    Two nodes on one SQLite data dir with the in-process broker would each hand
    out offsets the other never sees; the second one is refused instead. The OS
    drops the lock when the process dies, even on ``kill -9``.
    """
    if settings.database_url:
        return
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(settings.data_dir / LOCK_FILE, "a+")
    except OSError as exc:
        raise Refused(f"--data-dir {settings.data_dir} is not usable ({exc.strerror}): pick another --data-dir") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise Refused(
            f"--data-dir {settings.data_dir} is already served by another running node (pid {owner}): "
            f"stop it, or pass another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)


def banner(settings: Settings, ws_transport: str = "native") -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host}:{settings.port}"
    auth = settings.auth or "dev"
    auth_line = ("dev (a token is 'user' or 'user:device'; loopback only)" if auth == "dev"
                 else "jwt (" + ("HS256 secret" if settings.jwt_secret and not settings.jwt_public_key
                                 else "RS256/ES256 public key") + ")")
    storage = (f"PostgreSQL {mask(settings.database_url)}" if settings.database_url
               else f"SQLite in {settings.data_dir.absolute() / 'tether.sqlite3'}")
    broker = f"Redis {mask(settings.redis_url)}" if settings.redis_url else "in-process (one node)"
    return "\n".join([
        f"Tether {__version__}",
        f"  auth:     {auth_line}",
        f"  storage:  {storage}",
        f"  broker:   {broker}",
        f"  API key:  {'set (backends send X-API-Key)' if settings.api_key else 'not set (X-API-Key refused)'}",
        f"  app:      {base}/",
        f"  API docs: {base}/docs",
        f"  ws:       {base.replace('http', 'ws', 1)}/ws?token=…  ({ws_transport} transport)",
    ])
