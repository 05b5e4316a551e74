"""The real PostgreSQL and Redis on this machine, for contract and cluster tests.

When a service is down the test skips loudly, unless TETHER_REQUIRE_SERVICES=1
(set by .ci/run), where it fails: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

POSTGRES_URL = os.environ.get("TETHER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TETHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def need(name: str, port: int) -> None:
    if _reachable(port):
        return
    message = f"{name} is not running on 127.0.0.1:{port}"
    if os.environ.get("TETHER_REQUIRE_SERVICES"):
        pytest.fail(message + " (TETHER_REQUIRE_SERVICES=1: start it, see .ci/run)")
    pytest.skip("SKIPPED LOUDLY: " + message)


def need_postgres() -> str:
    need("PostgreSQL", 5432)
    return POSTGRES_URL


def need_redis() -> str:
    need("Redis", 6379)
    return REDIS_URL


def unique(prefix: str = "t") -> str:
    """A name no other test (or xdist worker) uses: keys, schemas, channels."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def with_query(url: str, **params: str) -> str:
    """``url`` with query parameters added (``schema=…`` for PostgreSQL)."""
    from urllib.parse import urlencode

    return url + ("&" if "?" in url else "?") + urlencode(params)
