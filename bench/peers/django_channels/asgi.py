"""The ASGI application: Django for HTTP (nothing routed), the consumer for every WebSocket."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.django_channels.settings")

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from bench.peers.django_channels.consumers import Rooms  # noqa: E402

application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": Rooms.as_asgi(),  # any path: the load generator connects to /
})
