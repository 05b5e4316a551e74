"""``Client``: the connection, subscriptions and outbox of ``BaseClient``, plus the feature helpers."""

from __future__ import annotations

from typing import Any, Callable

from tether.client.base import BaseClient
from tether.client.documents import Collection, send_document_write
from tether.client.helpers import Lock, Presence, update_with_retry
from tether.client.outbox import Entry


class Client(BaseClient):
    def documents(self, collection: str) -> Collection:
        return Collection(self, collection)

    def presence(self, key: str, *, interval: float = 10.0) -> Presence:
        return Presence(self, key, interval)

    def lock(self, key: str, ttl: float = 30, *, timeout: float | None = 0, on_lost: Callable[[], Any] | None = None) -> Lock:
        return Lock(self, key, ttl, timeout, on_lost)

    async def update_with_retry(self, collection: str, doc_id: str, fn: Callable[[Any], Any], max_retries: int = 5) -> dict[str, Any]:
        return await update_with_retry(self, collection, doc_id, fn, max_retries)

    async def _send_write(self, entry: Entry) -> Any:
        return await send_document_write(self, entry)
