"""Durable storage: one small SQL interface, SQLite embedded or PostgreSQL.

Domain modules write portable SQL (``?`` placeholders, ``ON CONFLICT``,
``RETURNING``) against :class:`Database`; each backend translates what it must.
"""

from __future__ import annotations

from pathlib import Path

from tether.storage.database import Database, Row

__all__ = ["Database", "Row", "open_database"]


async def open_database(url: str | None, data_dir: Path) -> Database:
    if url:
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in ("postgres", "postgresql", "postgresql+asyncpg"):
            # never fall back to SQLite on a typo: the operator asked for another database
            raise ValueError(f"unsupported database URL scheme {scheme!r}: use postgresql://")
        from tether.storage.postgres import PostgresDatabase

        db: Database = await PostgresDatabase.open("postgresql://" + rest)
    else:
        from tether.storage.sqlite import SQLiteDatabase

        data_dir.mkdir(parents=True, exist_ok=True)
        db = await SQLiteDatabase.open(data_dir / "tether.sqlite3")
    return db
