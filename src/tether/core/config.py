"""Server settings. Every field has a ``TETHER_*`` environment twin (see cli.py)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import unquote

#: How a secret is shown wherever a setting is printed (banner, `tether config`, messages).
MASK = "****"

#: Query parameters of a URL that hold a secret (libpq and asyncpg take ``password`` and
#: ``sslpassword`` there, redis-py ``password``): matched by name, case-insensitively.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|credential|^(api_?key|key)$", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with every secret in it replaced by ``****``: the password of its userinfo
    (``postgresql://u:pw@h/db``) and the value of each secret query parameter
    (``?password=pw``, ``?sslpassword=…``, ``?token=…``). The one masking used by the
    start-up banner, start-up refusals, ``tether migrate`` and ``tether config``."""
    # userinfo: after "//", up to the last "@" of the authority (as urlsplit reads it)
    url = re.sub(r"^([^/?#]*//[^/?#@:]*):[^/?#]+@", rf"\1:{MASK}@", url, count=1)
    rest, hash_, fragment = url.partition("#")  # edited in place: the URL is otherwise unchanged
    base, question, query = rest.partition("?")
    if query:
        query = "&".join(_masked_param(p) for p in query.split("&"))
    return base + question + query + hash_ + fragment


def _masked_param(param: str) -> str:
    name, eq, value = param.partition("=")
    return f"{name}={MASK}" if eq and value and _SECRET_PARAM.search(unquote(name)) else param


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./tether-data")
    auth: str | None = None  # "dev" | "jwt"; unset: "jwt" when a key is configured, else "dev"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # PEM text or a path to a PEM file (RS256/ES256)
    api_key: str | None = None
    database_url: str | None = None  # postgresql://… switches storage to PostgreSQL
    redis_url: str | None = None  # redis://… switches broker, history, presence, locks to Redis
    redis_prefix: str = "tether:"  # every Redis key and pub/sub channel starts with it (services sharing a Redis)
    presence_ttl: float = 30.0
    ping_interval: float = 25.0
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 256
    rate_per_connection: float = 100.0  # requests per second, sustained
    rate_burst: int = 200
    rate_per_user: float = 300.0
    send_queue_frames: int = 2000
    max_body_bytes: int = 1024 * 1024  # a REST request body over this is refused (413) before it is read
    rest_rate_per_user: float = 50.0  # REST requests per second per user (API key exempt), sustained …
    rest_rate_burst: int = 100  # … after a burst of this many; over it: 429 with Retry-After
    max_streams_per_user: int = 8  # open STREAM_STARTs per user (each holds at most a frame's worth of text)
    history_size: int = 1000
    history_ttl: float = 3600.0
    history_sweep: float = 60.0  # seconds between deletions of expired history (quiet channels included)
    idempotency_ttl: float = 24 * 3600.0
    device_ttl: float = 30.0  # a device's connections expire unless their node heartbeats them (cluster)
    retain_ended: float = 5.0  # a completed/failed shoot's progress stays retained this long
    stream_timeout: float = 60.0  # a stream with no delta for this long is closed as abandoned
    # Event types retained per id until `retain_ended` s after their status is completed|failed: TYPE:idField,…
    retained_progress: str = "SHOOT_PROGRESS:shootId,PROGRESS:id"
    retained_latest: str = "CREDIT_UPDATE"  # event types whose latest push is retained: TYPE,…
    message_types: str = "text,prayer,scripture"  # chat message types a user may post (the first is the default)
    channels_file: Path | None = None  # JSON list of namespace overrides
    log_level: str = "info"
    cors_origins: str | None = None  # comma-separated origins whose pages may call /api and /ws ("*": any, dev auth only)
    node_id: str | None = None  # how this node is named in the admin API; default "{hostname}:{port}"
    drain_timeout: float = 30.0  # SIGTERM -> exit at most this many seconds later
    drain_delay: float = 0.0  # seconds /healthz fails before clients are closed (load balancers notice)

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from ``TETHER_*`` variables, then ``overrides``."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get("TETHER_" + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)  # type: ignore[arg-type]
        s.data_dir = Path(s.data_dir)
        return s

    @property
    def loopback(self) -> bool:
        if self.host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def progress_rules(self) -> dict[str, str]:
        """``retained_progress`` as {event type: id field}."""
        rules = {}
        for item in _items(self.retained_progress):
            etype, sep, field = item.partition(":")
            if not (sep and _TYPE.match(etype) and _FIELD.match(field)):
                raise ValueError(f"--retained-progress: {item!r} is not TYPE:idField (e.g. SHOOT_PROGRESS:shootId)")
            rules[etype] = field
        return rules

    def latest_types(self) -> frozenset[str]:
        for etype in _items(self.retained_latest):
            if not _TYPE.match(etype):
                raise ValueError(f"--retained-latest: {etype!r} is not an UPPER_SNAKE_CASE event type")
        return frozenset(_items(self.retained_latest))

    def chat_message_types(self) -> tuple[str, ...]:
        types = tuple(_items(self.message_types))
        if not types:
            raise ValueError("--message-types: name at least one type (e.g. text)")
        for t in types:
            if not _MESSAGE_TYPE.match(t) or t == "system":
                raise ValueError(f"--message-types: {t!r} must be 1-32 of a-z 0-9 _ - and not 'system' (the server's)")
        return types

    def check(self) -> None:
        """Refuse settings that cannot work or would run an open server; the message says what to set."""
        try:
            self.progress_rules(), self.latest_types(), self.chat_message_types()
            self.check_numbers()
        except ValueError as exc:
            raise SystemExit(f"refusing to start: {exc}") from None
        if self.auth is None:
            self.auth = "jwt" if (self.jwt_secret or self.jwt_public_key) else "dev"
        if self.auth not in ("dev", "jwt"):
            raise SystemExit(f"--auth must be 'dev' or 'jwt', not {self.auth!r}")
        if self.auth == "dev" and not self.loopback:
            raise SystemExit(
                f"refusing to start: --auth dev accepts any 'user:device' token and is allowed only "
                f"on a loopback address, but --host is {self.host}. Set TETHER_JWT_SECRET (HS256) or "
                f"TETHER_JWT_PUBLIC_KEY (RS256/ES256) and use --auth jwt, or bind 127.0.0.1."
            )
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_public_key):
            raise SystemExit(
                "refusing to start: --auth jwt needs TETHER_JWT_SECRET (HS256) or "
                "TETHER_JWT_PUBLIC_KEY (RS256/ES256)."
            )
        if self.auth == "jwt" and self.jwt_secret and not self.jwt_public_key and len(self.jwt_secret.encode()) < 32:
            raise SystemExit(
                f"refusing to start: TETHER_JWT_SECRET is {len(self.jwt_secret.encode())} bytes; HS256 needs at least 32 "
                "(make one with: python -c \"import secrets; print(secrets.token_urlsafe(48))\")."
            )


    def check_numbers(self) -> None:
        """Every numeric setting is a finite number at or above its :data:`MINIMUMS` entry."""
        for name, minimum in MINIMUMS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"--{flag(name)} {value!r} is not a number")
            if value < minimum:
                raise ValueError(f"--{flag(name)} {value:g} cannot work: set it (or TETHER_{name.upper()}) "
                                 f"to at least {minimum:g}")


#: The least value of each numeric setting that still works (the port is checked on its own:
#: 1-65535). A 0 where a count or a period belongs would close every socket at once, refuse
#: every request or keep nothing, so these are refused at start.
MINIMUMS: dict[str, float] = {
    "presence_ttl": 0.5,  # seconds
    "ping_interval": 0.5,  # seconds; a connection silent for twice this is closed
    "max_frame_bytes": 1024,  # a CONNECT with a signed token must fit
    "max_subscriptions": 1,
    "rate_per_connection": 1,
    "rate_burst": 1,
    "rate_per_user": 1,
    "send_queue_frames": 10,
    "max_body_bytes": 1024,
    "rest_rate_per_user": 1,
    "rest_rate_burst": 1,
    "max_streams_per_user": 1,
    "history_size": 1,
    "history_ttl": 1,  # seconds
    "history_sweep": 0.1,  # seconds
    "idempotency_ttl": 1,  # seconds
    "device_ttl": 1,  # seconds
    "retain_ended": 0,  # seconds; 0: forgotten as soon as it ends
    "stream_timeout": 1,  # seconds
    "drain_timeout": 1,  # seconds
    "drain_delay": 0,  # seconds
}


def flag(name: str) -> str:
    """``presence_ttl`` -> ``presence-ttl``."""
    return name.replace("_", "-")


_TYPE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MESSAGE_TYPE = re.compile(r"^[a-z0-9_-]{1,32}$")


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _convert(annotation: object, raw: str) -> object:
    text = str(annotation)
    if "int" in text and "Path" not in text:
        return int(raw)
    if "float" in text:
        return float(raw)
    if "Path" in text:
        return Path(raw)
    return raw
