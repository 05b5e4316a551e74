"""Versioned documents through the outbox, with an optimistic local copy.

Writes are queued (durable before the call returns) and sent over REST with
the outbox id as ``Idempotency-Key``. The local view is the server's copy with
the pending writes replayed on top; a refused write leaves the outbox and the
view rolls back by itself. A 409 also stores the server's current document, so
what the app sees after the rollback is the truth, not its stale copy.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tether.client.errors import ServerError
from tether.client.outbox import Entry

if TYPE_CHECKING:
    from tether.client.base import BaseClient, Write


def _path(collection: str, doc_id: str | None = None) -> str:
    base = f"/api/collections/{quote(collection, safe='')}/documents"
    return base if doc_id is None else f"{base}/{quote(doc_id, safe='')}"


def conflict_document(error: ServerError) -> dict[str, Any] | None:
    """The current document a 409 carries (under ``error.document``, or ``error.current``)."""
    doc = error.data.get("document") or error.data.get("current")
    return doc if isinstance(doc, dict) else None


class Collection:
    def __init__(self, client: "BaseClient", name: str) -> None:
        self.client, self.name = client, name

    # -- local, optimistic -----------------------------------------------------------

    def local(self, doc_id: str) -> dict[str, Any] | None:
        """The optimistic view of one document (no network)."""
        return self.client.store.document(self.name, doc_id)

    def list(self) -> list[dict[str, Any]]:
        """Every cached document of this collection, pending writes applied (no network)."""
        return self.client.store.documents(self.name)

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        """The local view; fetched from the server first when nothing is cached and the client is online."""
        view = self.local(doc_id)
        if view is None and self.client.state == "connected":
            await self.fetch(doc_id)
            view = self.local(doc_id)
        return view

    # -- writes (queued) ---------------------------------------------------------------------

    async def create(self, data: Any, id: str | None = None) -> "Write":
        """Queue a create; the id is chosen here (``id`` or a random one) so it is usable offline."""
        doc_id = id or secrets.token_hex(8)
        return self.client._queue_write("doc.create", f"{self.name}/{doc_id}", {"data": data})

    async def update(self, doc_id: str, data: Any, version: int | None = None) -> "Write":
        """Queue a replace; with ``version`` the server refuses it (409, rolled back) if the document moved on."""
        return self.client._queue_write("doc.update", f"{self.name}/{doc_id}", {"data": data, "version": version})

    async def patch(self, doc_id: str, data: dict[str, Any]) -> "Write":
        return self.client._queue_write("doc.patch", f"{self.name}/{doc_id}", {"data": data})

    async def delete(self, doc_id: str) -> "Write":
        return self.client._queue_write("doc.delete", f"{self.name}/{doc_id}", {})

    # -- server reads ------------------------------------------------------------------------

    async def fetch(self, doc_id: str) -> dict[str, Any] | None:
        try:
            doc = await self.client.rest("GET", _path(self.name, doc_id))
        except ServerError as exc:
            if exc.status == 404:
                self.client.store.drop_document(self.name, doc_id)
                return None
            raise
        self.client.store.put_document(doc)
        return doc  # type: ignore[no-any-return]

    async def load(self, limit: int = 100) -> list[dict[str, Any]]:
        """Fetch every document the caller may read into the local cache."""
        after: str | None = None
        while True:
            params = f"?limit={limit}" + (f"&after={quote(after, safe='')}" if after else "")
            page = await self.client.rest("GET", _path(self.name) + params)
            for doc in page.get("documents", []):
                self.client.store.put_document(doc)
            after = page.get("next")
            if not after:
                return self.list()

    async def watch(self) -> Any:
        """Keep the cache current from the collection's change events."""
        return await self.client.subscribe(f"collections.{self.name}", self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        doc = data.get("document", data) if isinstance(data, dict) else None
        if not isinstance(doc, dict) or "id" not in doc:
            return
        doc = {"collection": self.name, **doc}
        if event.get("type") == "DOCUMENT_DELETED":
            self.client.store.drop_document(self.name, doc["id"])
        elif event.get("type") in ("DOCUMENT_CREATED", "DOCUMENT_UPDATED"):
            self.client.store.put_document(doc)


async def send_document_write(client: "BaseClient", entry: Entry) -> Any:
    """Send one queued document write; returns the server's document, raises ``ServerError``."""
    collection, _, doc_id = entry.target.partition("/")
    headers = {"Idempotency-Key": entry.key}
    store = client.store
    payload = entry.payload
    try:
        if entry.kind == "doc.create":
            doc = await client.rest("POST", _path(collection), {"id": doc_id, "data": payload["data"]}, headers=headers)
        elif entry.kind == "doc.update":
            body = {"data": payload["data"]}
            if payload.get("version") is not None:
                body["version"] = payload["version"]
            doc = await client.rest("PUT", _path(collection, doc_id), body, headers=headers)
        elif entry.kind == "doc.patch":
            doc = await client.rest("PATCH", _path(collection, doc_id), {"data": payload["data"]}, headers=headers)
        else:
            await client.rest("DELETE", _path(collection, doc_id), headers=headers, allow_statuses=(404,))
            store.drop_document(collection, doc_id)
            return {"id": doc_id, "deleted": True}
    except ServerError as exc:
        current = conflict_document(exc) if exc.status == 409 else None
        if current is not None:
            current = {"collection": collection, **current}
            if current.get("data") == payload.get("data") and current.get("updated_by", current.get("created_by")) == client.user_id:
                doc = current  # our own write, whose answer was lost: it is applied
            else:
                store.put_document(current)
                raise
        else:
            raise
    doc = {"collection": collection, **doc}
    old = store.server_document(collection, doc_id)
    store.put_document(doc)
    _rebase(client, entry, old, doc)
    return doc


def _rebase(client: "BaseClient", entry: Entry, old: dict[str, Any] | None, doc: dict[str, Any]) -> None:
    """Later queued updates of the same document that expected the version we just replaced
    now expect the version we produced (our own writes do not conflict with each other)."""
    base = entry.payload.get("version")
    if base is None and old is not None:
        base = old.get("version")
    for later in client.outbox.pending(kind="doc.update", target=entry.target):
        if later.seq > entry.seq and later.payload.get("version") is not None and later.payload["version"] == base:
            client.outbox.replace_payload(later.seq, {**later.payload, "version": doc.get("version")})
