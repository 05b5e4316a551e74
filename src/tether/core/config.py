"""Server settings. Every field has a ``TETHER_*`` environment twin (see cli.py)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path


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
    history_size: int = 1000
    history_ttl: float = 3600.0
    idempotency_ttl: float = 24 * 3600.0
    device_ttl: float = 30.0  # a device's connections expire unless their node heartbeats them (cluster)
    retain_ended: float = 5.0  # a completed/failed shoot's progress stays retained this long
    stream_timeout: float = 60.0  # a stream with no delta for this long is closed as abandoned
    channels_file: Path | None = None  # JSON list of namespace overrides
    log_level: str = "info"

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

    def check(self) -> None:
        """Refuse settings that would run an open server; the message says what to set."""
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


def _convert(annotation: object, raw: str) -> object:
    text = str(annotation)
    if "int" in text and "Path" not in text:
        return int(raw)
    if "float" in text:
        return float(raw)
    if "Path" in text:
        return Path(raw)
    return raw
