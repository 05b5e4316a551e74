"""A Django project with no database, no apps and no middleware: only what Channels needs.

The channel layer is ``channels_redis``' default ``RedisChannelLayer`` (on a blocking
connection pool: see ``layer.py``) on the local Redis,
under the prefix ``BENCH_DC_PREFIX`` (one per server: see ``bench.systems.Server``).
``capacity`` is raised from 100 to 10,000 messages per channel: the bench keeps up to
8 × R × M deliveries in flight in the rooms workload, and every consumer of one server
process shares one Redis list, so the default would drop messages (group sends skip a
full channel silently) and the load generator, waiting for them, would stall.
"""

import os

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
USE_TZ = True
ROOT_URLCONF = None
ASGI_APPLICATION = "bench.peers.django_channels.asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "bench.peers.django_channels.layer.BlockingPoolLayer",  # see layer.py
        "CONFIG": {
            "hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")],
            "prefix": os.environ.get("BENCH_DC_PREFIX", "bench_dc"),
            "capacity": 10_000,
        },
    },
}
