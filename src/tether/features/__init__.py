"""The domain features: each is one :class:`~tether.core.node.Feature` and imports only the core
(and :mod:`tether.features.rest`, what every feature's REST routes depend on)."""

from __future__ import annotations

from tether.core.node import Feature
from tether.features.admin import AdminFeature
from tether.features.channels import ChannelsFeature
from tether.features.devices import DevicesFeature
from tether.features.documents import DocumentsFeature
from tether.features.events import EventsFeature
from tether.features.locks import LocksFeature
from tether.features.notes import NotesFeature
from tether.features.presence import PresenceFeature
from tether.features.sessions import SessionsFeature
from tether.features.streams import StreamsFeature

#: What every node runs, in start order.
DEFAULT_FEATURES: list[type[Feature]] = [
    ChannelsFeature, PresenceFeature, LocksFeature, DocumentsFeature,
    SessionsFeature, NotesFeature, EventsFeature, DevicesFeature, StreamsFeature, AdminFeature,
]
