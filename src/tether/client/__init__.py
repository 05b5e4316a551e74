"""The local-first Python client: ``from tether.client import Client``."""

from tether.client.backoff import Backoff
from tether.client.base import Subscription, Write
from tether.client.client import Client
from tether.client.documents import Collection
from tether.client.errors import ClientError, Conflict, Disconnected, DisconnectedByServer, Failed, LockTimeout, ServerError, classify
from tether.client.outbox import Entry

__all__ = ["Backoff", "Client", "ClientError", "Collection", "Conflict", "Disconnected", "DisconnectedByServer", "Entry", "Failed",
           "LockTimeout", "ServerError", "Subscription", "Write", "classify"]
