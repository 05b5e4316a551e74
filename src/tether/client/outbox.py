"""The outbox: every write, persisted in SQLite before the call that made it returns.

Entries are sent in ``seq`` order. ``seq`` comes from SQLite ``AUTOINCREMENT``,
so it is never reused, even after the rows are deleted or the process restarts;
with the client id that is stored beside it, ``{client_id}-{seq}`` is a
per-client monotonic id that the server uses as the idempotency key, so a retry
after a lost acknowledgement is applied once.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from tether.wire.jsonutil import dumps, loads

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,          -- publish | doc.create | doc.update | doc.delete
    target TEXT NOT NULL,        -- the channel, or "collection/id"
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


def open_db(path: str) -> sqlite3.Connection:
    """One connection per client; autocommit, so every statement is durable when it returns."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    if path != ":memory:":
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a write the app was told about survives power loss
    db.execute("PRAGMA busy_timeout=5000")
    return db


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    target: str
    payload: dict[str, Any]
    created_at: float
    client_id: str

    @property
    def key(self) -> str:
        """The idempotency key: unique per client, increasing with every write."""
        return f"{self.client_id}-{self.seq}"


class Outbox:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'client_id'").fetchone()
        if row is None:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('client_id', ?)", (secrets.token_hex(8),))
            row = db.execute("SELECT value FROM meta WHERE key = 'client_id'").fetchone()
        self.client_id: str = row["value"]

    def add(self, kind: str, target: str, payload: dict[str, Any]) -> Entry:
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO outbox (kind, target, payload, created_at) VALUES (?, ?, ?, ?)",
            (kind, target, dumps(payload), now),
        )
        return Entry(int(cur.lastrowid or 0), kind, target, payload, now, self.client_id)

    def pending(self, limit: int = 1_000_000, *, kind: str | None = None, target: str | None = None) -> list[Entry]:
        sql, args = "SELECT * FROM outbox", []
        where = []
        if kind is not None:
            where.append("kind LIKE ?")
            args.append(kind)
        if target is not None:
            where.append("target = ?")
            args.append(target)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [Entry(r["seq"], r["kind"], r["target"], loads(r["payload"]), r["created_at"], self.client_id) for r in rows]

    def get(self, seq: int) -> Entry | None:
        r = self.db.execute("SELECT * FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return None if r is None else Entry(r["seq"], r["kind"], r["target"], loads(r["payload"]), r["created_at"], self.client_id)

    def remove(self, seq: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def replace_payload(self, seq: int, payload: dict[str, Any]) -> None:
        self.db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (dumps(payload), seq))

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
