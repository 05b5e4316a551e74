"""`tether migrate`: create or update the schema and say what changed."""

from __future__ import annotations

from tether.core.config import Settings
from tether.core.node import Node
from tether.features import DEFAULT_FEATURES
from tether.server.preflight import mask
from tether.storage import open_database
from tether.storage.database import Database

_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    "postgresql": "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()",
}


async def tables(db: Database) -> set[str]:
    rows = await db.fetchall(_TABLES[db.dialect])
    return {str(r["name"]) for r in rows}


async def migrate(settings: Settings) -> str:
    where = (f"PostgreSQL {mask(settings.database_url)}" if settings.database_url
             else f"SQLite {settings.data_dir / 'tether.sqlite3'}")
    db = await open_database(settings.database_url, settings.data_dir)
    try:
        before = await tables(db)
    finally:
        await db.close()
    node = Node(settings, DEFAULT_FEATURES)
    await node.start()
    try:
        after = await tables(node.db)
    finally:
        await node.stop()
    created = sorted(after - before)
    if not created:
        return f"{where}: the schema is up to date ({len(after)} tables)"
    return f"{where}: created {len(created)} tables: {', '.join(created)}"
