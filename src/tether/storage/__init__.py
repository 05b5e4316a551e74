"""Durable storage: one small SQL interface, SQLite embedded or PostgreSQL.

Domain modules write portable SQL (``?`` placeholders, ``ON CONFLICT``,
``RETURNING``) against :class:`Database`; each backend translates what it must.
"""

from __future__ import annotations

from pathlib import Path

from tether.storage.database import Database, Row

__all__ = ["Database", "Row", "open_database"]


async def open_database(url: str | None, data_dir: Path) -> Database:
    if url and url.startswith(("postgres://", "postgresql://")):
        from tether.storage.postgres import PostgresDatabase

        db: Database = await PostgresDatabase.open(url)
    else:
        from tether.storage.sqlite import SQLiteDatabase

        data_dir.mkdir(parents=True, exist_ok=True)
        db = await SQLiteDatabase.open(data_dir / "tether.sqlite3")
    return db
