"""Timestamps on the wire: RFC 3339 UTC with milliseconds and ``Z`` (``2026-11-27T12:00:00.000Z``).

Every REST answer and every event writes its times with :func:`iso` / :func:`now_iso`
(or :func:`wire` for a time kept as text), so clients decode one format everywhere.
Milliseconds are truncated, never rounded up: an ``expires_at`` is never later than
the real expiry.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

#: The one wire format, for validating (tests, clients).
PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def iso(ts: float) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (what JavaScript's ``Date.toJSON()`` writes)."""
    ms = int(ts * 1000)  # one truncation: seconds and milliseconds can never disagree
    whole, frac = divmod(ms, 1000)
    return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{frac:03d}Z"


def now_iso() -> str:
    return iso(time.time())


def precise_now() -> str:
    """Now with microseconds, for times stored as text that must sort finely (pass through :func:`wire` to send)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wire(text: str | None) -> str | None:
    """A stored RFC 3339 time (any precision or offset) in the wire format; ``None`` stays ``None``."""
    if text is None:
        return None
    if len(text) == 27 and text[19] == "." and text[26] == "Z":  # the common case: microseconds, UTC
        return text[:23] + "Z"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    utc = parsed.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
