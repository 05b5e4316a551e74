"""Durable storage: one small SQL interface, SQLite embedded or PostgreSQL.

Domain modules write portable SQL (``?`` placeholders, ``ON CONFLICT``,
``RETURNING``) against :class:`Database`; each backend translates what it must.
"""

from tether.storage.database import Database, Row, open_database

__all__ = ["Database", "Row", "open_database"]
