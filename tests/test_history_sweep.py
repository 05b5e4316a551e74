"""A live server deletes the history of channels nobody publishes to any more once it
is older than the channel's TTL: storage stays bounded by the history window."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.helpers import SCALED


def history_rows(data_dir) -> int:  # type: ignore[no-untyped-def]
    with sqlite3.connect(data_dir / "tether.sqlite3") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM channel_history").fetchone()[0])


@pytest.mark.skipif(SCALED, reason="Redis history expires as a whole key (covered by the broker contract)")
async def test_quiet_channels_history_is_deleted_after_its_ttl(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(env={"TETHER_HISTORY_TTL": "1", "TETHER_HISTORY_SWEEP": "0.2"})
    async with srv.http(api_key=True) as http:
        for i in range(5):
            for room in ("public.ended-a", "public.ended-b"):
                r = await http.post(f"/api/channels/{room}/publish", json={"data": {"i": i}})
                assert r.status_code == 200, r.text
        for _ in range(300):  # both rooms went quiet: their rows must go without another publish
            if history_rows(srv.data_dir) == 0:
                break
            await asyncio.sleep(0.05)
        assert history_rows(srv.data_dir) == 0
        r = await http.post("/api/channels/public.ended-a/publish", json={"data": {"i": 5}})
        assert r.json()["offset"] == 6  # offsets go on after the history is gone
