"""The local store: the last server state of what the app watches, plus the outbox on top.

The app's view is optimistic: ``document()`` and ``messages()`` are the server
state replayed with the pending outbox writes, so removing a refused write from
the outbox rolls back exactly that change. Listeners hear about changes
debounced: a burst of changes inside ``debounce`` seconds is one call with the
set of changed keys (``documents/{collection}/{id}``, ``channels/{channel}``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
from typing import Any, Callable

from tether.client.outbox import Outbox
from tether.wire.jsonutil import dumps, loads

log = logging.getLogger("tether.client")

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (channel TEXT PRIMARY KEY, "offset" INTEGER NOT NULL, epoch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (collection TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
                                      PRIMARY KEY (collection, id));
CREATE TABLE IF NOT EXISTS events (channel TEXT NOT NULL, "offset" INTEGER NOT NULL, event TEXT NOT NULL,
                                   PRIMARY KEY (channel, "offset"));
"""

Listener = Callable[[frozenset[str]], Any]


class Store:
    def __init__(self, db: sqlite3.Connection, outbox: Outbox, *, debounce: float = 0.05, keep_events: int = 500) -> None:
        self.db, self.outbox = db, outbox
        db.executescript(SCHEMA)
        self.debounce = debounce
        self.keep_events = keep_events
        self._listeners: list[Listener] = []
        self._changed: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    # -- change listeners -------------------------------------------------------

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(keys)`` after changes settle; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def changed(self, key: str) -> None:
        self._changed.add(key)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.debounce, self._notify)

    def _notify(self) -> None:
        self._timer = None
        keys, self._changed = frozenset(self._changed), set()
        for listener in list(self._listeners):
            try:
                result = listener(keys)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:
                log.exception("change listener failed")

    # -- channel positions --------------------------------------------------------

    def position(self, channel: str) -> tuple[int, str] | None:
        r = self.db.execute('SELECT "offset", epoch FROM positions WHERE channel = ?', (channel,)).fetchone()
        return None if r is None else (int(r[0]), str(r[1]))

    def set_position(self, channel: str, offset: int, epoch: str) -> None:
        self.db.execute(
            'INSERT INTO positions (channel, "offset", epoch) VALUES (?, ?, ?) '
            'ON CONFLICT (channel) DO UPDATE SET "offset" = excluded."offset", epoch = excluded.epoch',
            (channel, offset, epoch),
        )

    # -- channel events -------------------------------------------------------------

    def add_event(self, event: dict[str, Any]) -> None:
        channel, offset = event["channel"], event["offset"]
        self.db.execute('INSERT OR REPLACE INTO events (channel, "offset", event) VALUES (?, ?, ?)',
                        (channel, offset, dumps(event)))
        if offset % 50 == 0:
            self.db.execute('DELETE FROM events WHERE channel = ? AND "offset" <= ?', (channel, offset - self.keep_events))
        self.changed(f"channels/{channel}")

    def clear_events(self, channel: str) -> None:
        self.db.execute("DELETE FROM events WHERE channel = ?", (channel,))
        self.changed(f"channels/{channel}")

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """The cached events of a channel, then this client's pending publishes (``pending: True``)."""
        rows = self.db.execute('SELECT event FROM events WHERE channel = ? ORDER BY "offset"', (channel,)).fetchall()
        out = [loads(r[0]) for r in rows]
        for e in self.outbox.pending(kind="publish", target=channel):
            out.append({"type": "PUBLICATION", "channel": channel, "data": e.payload["data"],
                        "pending": True, "outbox_id": e.seq})
        return out

    # -- documents ----------------------------------------------------------------------

    def server_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        r = self.db.execute("SELECT doc FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)).fetchone()
        return None if r is None else loads(r[0])

    def put_document(self, doc: dict[str, Any]) -> None:
        """Keep the server's copy, unless ours is newer (events and answers can cross)."""
        collection, doc_id = doc["collection"], doc["id"]
        old = self.server_document(collection, doc_id)
        if old is not None and (old.get("version") or 0) > (doc.get("version") or 0):
            return
        self.db.execute("INSERT OR REPLACE INTO documents (collection, id, doc) VALUES (?, ?, ?)",
                        (collection, doc_id, dumps(doc)))
        self.changed(f"documents/{collection}/{doc_id}")

    def drop_document(self, collection: str, doc_id: str) -> None:
        self.db.execute("DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
        self.changed(f"documents/{collection}/{doc_id}")

    def document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The optimistic view: the server's copy with the pending writes replayed on top."""
        view = self.server_document(collection, doc_id)
        for e in self.outbox.pending(kind="doc.%", target=f"{collection}/{doc_id}"):
            view = apply(view, e.kind, collection, doc_id, e.payload)
        return view

    def documents(self, collection: str) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.db.execute("SELECT id FROM documents WHERE collection = ?", (collection,))]
        for e in self.outbox.pending(kind="doc.%"):
            c, _, i = e.target.partition("/")
            if c == collection and i not in ids:
                ids.append(i)
        views = (self.document(collection, i) for i in ids)
        return [v for v in views if v is not None]


def apply(view: dict[str, Any] | None, kind: str, collection: str, doc_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """One pending write replayed on a document view."""
    if kind == "doc.delete":
        return None
    base = view or {"id": doc_id, "collection": collection, "version": None}
    if kind == "doc.patch":
        return {**base, "data": {**(base.get("data") or {}), **payload["data"]}, "pending": True}
    return {**base, "data": payload["data"], "pending": True}
