"""Timestamps on the wire: RFC 3339 UTC with milliseconds and ``Z`` (``2026-11-27T12:00:00.000Z``)."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds, as JavaScript's ``Date.toJSON()`` writes it."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def now_iso() -> str:
    return iso(time.time())
