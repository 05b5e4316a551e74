"""``python -m bench.peers.django_channels PORT``: uvicorn (uvloop) serving the Channels app.

Its Redis keys live under ``BENCH_DC_PREFIX`` (the bench sets one per server and deletes
them when the server stops; run by hand, a prefix of this process's own).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("BENCH_DC_PREFIX", f"bench_dc_{os.getpid()}")

import uvicorn  # noqa: E402

from bench.peers.django_channels.asgi import application  # noqa: E402

if __name__ == "__main__":
    uvicorn.run(application, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                ws_per_message_deflate=False, ws_ping_interval=None, lifespan="off")
