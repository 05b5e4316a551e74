"""Shared notes of a live session: one versioned text per session, edited by its participants.

A session's notes follow the session's own access rules (see :mod:`tether.features.sessions`):
whoever reads the chat reads the notes, a present participant writes them. A save
names the version it was based on; a stale one is refused with 409 and the current
notes, so two people editing at once never silently overwrite each other. Every save
is a ``NOTES_UPDATED`` event on ``sessions.{id}``.

Who is editing is an ordinary lock (``POST /api/locks/sessions.{id}.notes``); the
notes do not require it, so a client without the lock still gets the version check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from tether.core.auth import Identity
from tether.core.connection import Connection, Op
from tether.core.node import Feature
from tether.features.rest import Caller, JsonInt
from tether.storage.database import Row
from tether.wire.errors import TetherError, forbidden
from tether.wire.jsoncheck import INT_MAX

MAX_TEXT = 20_000

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS session_notes (
        session_id TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        version BIGINT NOT NULL,
        updated_by TEXT,
        updated_at TEXT
    )""",
]


class NotesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT)]
    version: JsonInt = Field(..., ge=0, le=INT_MAX, description="the version this text was based on (0: no notes yet)")


def notes_out(sid: str, row: Row | None) -> dict[str, Any]:
    if row is None:
        return {"session_id": sid, "text": "", "version": 0, "updated_by": None, "updated_at": None}
    return {"session_id": sid, "text": row["text"], "version": int(row["version"]),
            "updated_by": row["updated_by"], "updated_at": row["updated_at"]}


class NotesFeature(Feature):
    name = "notes"

    async def start(self) -> None:
        await self.node.db.migrate(SCHEMA)

    @property
    def sessions(self) -> Any:
        """The live-sessions domain, found by name: features never import each other."""
        return next(f for f in self.node.features if f.name == "sessions").domain

    async def _load(self, q: Any, sid: str) -> dict[str, Any]:
        return notes_out(sid, await q.fetchone("SELECT * FROM session_notes WHERE session_id = ?", sid))

    async def get(self, who: Identity, sid: str) -> dict[str, Any]:
        acc = await self.sessions._access(self.node.db, who, sid)
        if not acc.reader:
            raise forbidden("only participants read this session's notes: join it first")
        return await self._load(self.node.db, sid)

    async def save(self, who: Identity, sid: str, body: NotesIn) -> dict[str, Any]:
        async with self.node.change() as change:
            tx = change.tx
            acc = await self.sessions._access(tx, who, sid)
            if not acc.session["is_active"]:
                raise TetherError("conflict", "this session has ended")
            if not (acc.present or who.is_server):
                raise forbidden("only participants edit this session's notes: join it first")
            ts = now()
            if body.version == 0:
                row = await tx.fetchone(
                    """INSERT INTO session_notes (session_id, text, version, updated_by, updated_at)
                       VALUES (?, ?, 1, ?, ?) ON CONFLICT (session_id) DO NOTHING RETURNING version""",
                    sid, body.text, who.user_id, ts)
            else:
                row = await tx.fetchone(
                    """UPDATE session_notes SET text = ?, version = version + 1, updated_by = ?, updated_at = ?
                       WHERE session_id = ? AND version = ? RETURNING version""",
                    body.text, who.user_id, ts, sid, body.version)
            current = await self._load(tx, sid)
            if row is not None:
                change.emit(f"sessions.{sid}", "NOTES_UPDATED", current)
        if row is None:
            raise TetherError("conflict", f"the notes changed since version {body.version}: "
                              f"they are at version {current['version']}", notes=current)
        return current

    def ops(self) -> dict[str, Op]:
        async def get(conn: Connection, data: dict[str, Any]) -> Any:
            return await self.get(conn.identity, _sid(data))

        async def save(conn: Connection, data: dict[str, Any]) -> Any:
            return await self.save(conn.identity, _sid(data), validate(data))

        return {"NOTES_GET": get, "NOTES_SAVE": save}

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/sessions", tags=["sessions"])

        @router.get("/{session_id}/notes")
        async def get(session_id: str, who: Caller) -> dict[str, Any]:
            """The session's notes: `{session_id, text, version, updated_by, updated_at}` (version 0: none yet)."""
            return await self.get(who, session_id)

        @router.put("/{session_id}/notes")
        async def save(session_id: str, body: NotesIn, who: Caller) -> dict[str, Any]:
            """Replace the notes if `version` is still current, else 409 with the current notes in `error.notes`."""
            return await self.save(who, session_id, body)

        return router


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def validate(data: dict[str, Any]) -> NotesIn:
    try:
        return NotesIn.model_validate({k: v for k, v in data.items() if k != "session_id"})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "data"
        raise TetherError("bad_request", f"{where}: {err['msg']}", status=422, field=where) from None


def _sid(data: dict[str, Any]) -> str:
    sid = data.get("session_id")
    if not isinstance(sid, str) or not sid:
        raise TetherError("bad_request", "session_id: required string", status=422, field="session_id")
    return sid
