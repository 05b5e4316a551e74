"""Live sessions: rooms with a host, participants and chat, updated live.

:class:`Sessions` is the domain: SQL and its events through ``node.change()``
(an event commits with the change it announces), nothing else. REST routes and WebSocket ops are thin adapters
that validate with the same pydantic models and call the same methods.

Who sees what (docs/sessions.md):
- a public session is visible to every signed-in user; a private one only to
  its participants (present or past) and invitees, everyone else gets 404;
- the chat and channel ``sessions.{id}`` belong to the current participants and
  the invitees (plus past participants once the session ended);
- private sessions never appear on the browse channel ``sessions``; their
  invitees learn of them by ``SESSION_INVITED`` on ``users.{id}``.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Header, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
)

from tether.core.auth import ID_PATTERN, Identity, valid_id
from tether.core.connection import Connection, Op
from tether.core.namespaces import Namespace
from tether.core.node import Feature
from tether.core.outbox import Change
from tether.features.rest import Caller, JsonInt, NodeDep, once
from tether.storage.database import Queries, Row
from tether.wire.errors import TetherError, forbidden, not_found, shown
from tether.wire.jsoncheck import INT_MAX
from tether.wire.jsonutil import dumps, loads
from tether.wire.timestamps import precise_now, wire

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        category TEXT NOT NULL,
        tags TEXT NOT NULL,
        max_participants INTEGER NOT NULL,
        current_participants INTEGER NOT NULL,
        is_private INTEGER NOT NULL,
        host_id TEXT NOT NULL,
        is_active INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        ended_at TEXT,
        version BIGINT NOT NULL,
        message_seq BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_browse ON sessions (is_active, created_at)",
    """CREATE TABLE IF NOT EXISTS session_tags (
        session_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (session_id, tag)
    )""",
    """CREATE TABLE IF NOT EXISTS session_participants (
        session_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        joined_at TEXT NOT NULL,
        left_at TEXT,
        PRIMARY KEY (session_id, user_id)
    )""",
    """CREATE TABLE IF NOT EXISTS session_invites (
        session_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        invited_by TEXT NOT NULL,
        invited_at TEXT NOT NULL,
        PRIMARY KEY (session_id, user_id)
    )""",
    """CREATE TABLE IF NOT EXISTS session_messages (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        id TEXT NOT NULL,
        user_id TEXT,
        user_name TEXT NOT NULL,
        message TEXT NOT NULL,
        message_type TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    )""",
    # The message a stream became: its primary key is what makes a stream stored once.
    """CREATE TABLE IF NOT EXISTS session_stream_messages (
        stream_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS session_stream_messages_seq ON session_stream_messages (session_id, seq)",
]

# Not blank: a character outside every engine's whitespace (Python's, ECMA's in OpenAPI clients,
# Rust's trim in pydantic), so all of them agree on what it accepts.
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
User = StringConstraints(pattern=ID_PATTERN)  # a user id: checked before anything runs (an idempotent replay included)
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NOT_BLANK)]
Description = Annotated[str, StringConstraints(max_length=2000)]
Category = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=NOT_BLANK)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32, pattern=NOT_BLANK)]
Seats = Annotated[int, Field(ge=2, le=50)]
UserName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NOT_BLANK)]


def _dedupe(tags: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for t in tags:
        seen.setdefault(t.lower(), t)
    return list(seen.values())


Tags = Annotated[list[Tag], Field(max_length=10), AfterValidator(_dedupe)]


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Title
    description: Description = ""
    category: Category = "General"
    max_participants: Seats = 10
    tags: Tags = []
    is_private: StrictBool = False
    user_name: UserName | None = Field(None, description="the host's display name (default: user id)")
    user_id: Annotated[str, User] | None = Field(None, description="host, for the server API key only")


class SessionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: JsonInt | None = Field(None, description="the version this edit is based on: stale -> 409")
    title: Title | None = None
    description: Description | None = None
    category: Category | None = None
    max_participants: Seats | None = None
    tags: Tags | None = None
    is_private: StrictBool | None = Field(None, description="fixed at creation; only its current value is accepted")


class JoinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_name: UserName | None = None
    user_id: Annotated[str, User] | None = None


class LeaveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Annotated[str, User] | None = None


class InviteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Annotated[str, User]  # checked by invite() (422)


MAX_MESSAGE = 4000


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE, pattern=NOT_BLANK)]
    message_type: Literal["text", "prayer", "scripture"] = "text"  # the default types; see message_model
    user_id: Annotated[str, User] | None = None

    @field_validator("message")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


def message_model(types: tuple[str, ...]) -> type[MessageIn]:
    """MessageIn for the configured chat message types (``--message-types``); the default is
    ``text`` when configured, else the first type."""
    default = "text" if "text" in types else types[0]
    return create_model("MessageIn", __base__=MessageIn,  # type: ignore[no-any-return, call-overload]
                        message_type=(Literal[types], Field(default, description="one of: " + ", ".join(types))))


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: Annotated[str, StringConstraints(max_length=200)] | None = None
    category: Annotated[str, StringConstraints(max_length=64)] | None = None
    tag: Annotated[str, StringConstraints(max_length=32)] | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    after: Annotated[str, StringConstraints(max_length=200)] | None = None


CURSOR_PATTERN = r"^[A-Za-z0-9_.@+\-]+$"
# JSON (a WebSocket request) may give a seq as a number.
Cursor = Annotated[str, BeforeValidator(lambda v: str(v) if type(v) is int else v),
                   StringConstraints(min_length=1, max_length=128, pattern=CURSOR_PATTERN)]


class MessagesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A cursor is a message's seq, or its id (the page then starts next to that message).
    before: Cursor | None = None
    after: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Validate a WebSocket request like FastAPI does a body: 422 naming the field."""
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in ("session_id", "idempotency_key")})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "data"
        raise TetherError("bad_request", f"{where}: {err['msg']}", status=422, field=where) from None


def now() -> str:
    """Stored with microseconds, so rows sort finely as text; sent with milliseconds (``wire``)."""
    return precise_now()


def conflict(message: str, **extra: Any) -> TetherError:
    return TetherError("conflict", message, **extra)


def session_out(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "category": row["category"],
        "tags": loads(row["tags"]),
        "max_participants": int(row["max_participants"]),
        "current_participants": int(row["current_participants"]),
        "is_private": bool(row["is_private"]),
        "host_id": row["host_id"],
        "is_active": bool(row["is_active"]),
        "created_at": wire(row["created_at"]),
        "updated_at": wire(row["updated_at"]),
        "ended_at": wire(row["ended_at"]),
        "version": int(row["version"]),
    }


def participant_out(row: Row, host_id: str) -> dict[str, Any]:
    return {
        "user_id": row["user_id"],
        "user_name": row["user_name"],
        "is_host": row["user_id"] == host_id,
        "joined_at": wire(row["joined_at"]),
        "left_at": wire(row["left_at"]),
    }


def message_out(row: Row) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "session_id", "user_id", "user_name", "message", "message_type")} | {
        "seq": int(row["seq"]), "created_at": wire(row["created_at"]), "stream_id": row.get("stream_id"),
    }


class Access:
    """What one user may do with one session (see the module docstring)."""

    def __init__(self, who: Identity, user: str, session: Row, part: Row | None, invited: bool) -> None:
        self.session, self.part, self.invited = session, part, invited
        self.present = part is not None and part["left_at"] is None
        self.visible = who.is_server or not session["is_private"] or part is not None or invited
        self.reader = who.is_server or self.present or invited or (part is not None and not session["is_active"])
        self.host = who.is_server or session["host_id"] == user


class Sessions:
    """The live-sessions domain; every method takes the caller's identity and plain values."""

    STRIPES = 64

    def __init__(self, node: Any) -> None:
        self.node = node
        # Writes to one session and their publishes run under one lock, so on a node
        # the channel offsets follow the commit (and message seq) order.
        self._locks = [asyncio.Lock() for _ in range(self.STRIPES)]

    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(sid.encode()) % self.STRIPES]

    @staticmethod
    def actor(who: Identity, user_id: str | None) -> str:
        """A body ``user_id`` must be the caller's own, unless the caller holds the API key."""
        if user_id is None or user_id == who.user_id:
            return who.user_id
        if not who.is_server:
            raise forbidden("'user_id' must be your own user id (only the server API key acts for others)")
        if not valid_id(user_id):
            raise TetherError("bad_request", "user_id: not a valid user id", status=422, field="user_id")
        return user_id

    async def _access(self, q: Queries, who: Identity, sid: str, user: str | None = None) -> Access:
        if not valid_id(sid):
            raise TetherError("bad_request", f"session_id {shown(sid)} is not a session id "
                              "(1-128 of A-Z a-z 0-9 _ . @ + -)", field="session_id")
        user = user or who.user_id
        s = await q.fetchone("SELECT * FROM sessions WHERE id = ?", sid)
        if s is not None:
            part = await q.fetchone(
                "SELECT * FROM session_participants WHERE session_id = ? AND user_id = ?", sid, user)
            inv = await q.fetchone("SELECT user_id FROM session_invites WHERE session_id = ? AND user_id = ?", sid, user)
            access = Access(who, user, s, part, inv is not None)
            if access.visible:
                return access
        raise not_found(f"no session {shown(sid)}")

    async def _system(self, q: Queries, sid: str, text: str) -> dict[str, Any]:
        return await self._insert_message(q, sid, None, "System", text, "system")

    async def _insert_message(self, q: Queries, sid: str, user: str | None, name: str, text: str, kind: str,
                              stream_id: str | None = None) -> dict[str, Any]:
        row = await q.fetchone("UPDATE sessions SET message_seq = message_seq + 1 WHERE id = ? RETURNING message_seq", sid)
        assert row is not None
        msg = {"id": str(uuid.uuid4()), "session_id": sid, "seq": int(row["message_seq"]), "user_id": user,
               "user_name": name, "message": text, "message_type": kind, "created_at": now(), "stream_id": stream_id}
        await q.execute(
            """INSERT INTO session_messages (session_id, seq, id, user_id, user_name, message, message_type, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            sid, msg["seq"], msg["id"], user, name, text, kind, msg["created_at"])
        if stream_id is not None:
            await q.execute("INSERT INTO session_stream_messages (stream_id, session_id, seq) VALUES (?, ?, ?)",
                            stream_id, sid, msg["seq"])
        return message_out(msg)

    @staticmethod
    def _publish_session(change: Change, type: str, session: dict[str, Any], *, browse: bool = True) -> None:
        """A change of the session itself: its own channel, and the browse list when public."""
        change.emit(f"sessions.{session['id']}", type, session)
        if browse and not session["is_private"]:
            change.emit("sessions", type, session)

    async def _row(self, q: Queries, sid: str) -> Row:
        row = await q.fetchone("SELECT * FROM sessions WHERE id = ?", sid)
        assert row is not None
        return row

    # -- sessions ---------------------------------------------------------------

    async def create(self, who: Identity, body: SessionIn) -> dict[str, Any]:
        host = self.actor(who, body.user_id)
        sid, ts = str(uuid.uuid4()), now()
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                await tx.execute(
                    """INSERT INTO sessions (id, title, description, category, tags, max_participants,
                           current_participants, is_private, host_id, is_active, created_at, updated_at,
                           ended_at, version, message_seq)
                       VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, 1, ?, ?, NULL, 1, 0)""",
                    sid, body.title, body.description, body.category, dumps(body.tags), body.max_participants,
                    int(body.is_private), host, ts, ts)
                await self._set_tags(tx, sid, body.tags)
                await tx.execute(
                    "INSERT INTO session_participants (session_id, user_id, user_name, joined_at, left_at) VALUES (?, ?, ?, ?, NULL)",
                    sid, host, body.user_name or host, ts)
                session = session_out(await self._row(tx, sid))
                if not session["is_private"]:
                    change.emit("sessions", "SESSION_CREATED", session)
        return session

    @staticmethod
    async def _set_tags(q: Queries, sid: str, tags: list[str]) -> None:
        await q.execute("DELETE FROM session_tags WHERE session_id = ?", sid)
        for tag in tags:
            await q.execute("INSERT INTO session_tags (session_id, tag) VALUES (?, ?)", sid, tag.lower())

    async def get(self, who: Identity, sid: str) -> dict[str, Any]:
        return session_out((await self._access(self.node.db, who, sid)).session)

    async def browse(self, who: Identity, query: ListQuery) -> dict[str, Any]:
        sql = ["SELECT s.* FROM sessions s WHERE s.is_active = 1"]
        args: list[Any] = []
        if not who.is_server:
            sql.append("""AND (s.is_private = 0
                OR EXISTS (SELECT 1 FROM session_participants p WHERE p.session_id = s.id AND p.user_id = ?)
                OR EXISTS (SELECT 1 FROM session_invites i WHERE i.session_id = s.id AND i.user_id = ?))""")
            args += [who.user_id, who.user_id]
        if query.category:
            sql.append("AND LOWER(s.category) = ?")
            args.append(query.category.strip().lower())
        if query.tag:
            sql.append("AND EXISTS (SELECT 1 FROM session_tags t WHERE t.session_id = s.id AND t.tag = ?)")
            args.append(query.tag.strip().lower())
        if query.q and query.q.strip():
            like = "%" + query.q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            sql.append(r"""AND (LOWER(s.title) LIKE ? ESCAPE '\' OR LOWER(s.description) LIKE ? ESCAPE '\'
                OR EXISTS (SELECT 1 FROM session_tags t WHERE t.session_id = s.id AND t.tag LIKE ? ESCAPE '\'))""")
            args += [like, like, like]
        if query.after:
            created, _, last_id = query.after.partition("|")
            if not last_id:
                raise TetherError("bad_request", "after: not a cursor from a previous page's 'next'", status=422, field="after")
            sql.append("AND (s.created_at < ? OR (s.created_at = ? AND s.id < ?))")
            args += [created, created, last_id]
        sql.append("ORDER BY s.created_at DESC, s.id DESC LIMIT ?")
        args.append(query.limit + 1)
        rows = await self.node.db.fetchall(" ".join(sql), *args)
        page = rows[: query.limit]
        nxt = f"{page[-1]['created_at']}|{page[-1]['id']}" if len(rows) > query.limit else None
        return {"sessions": [session_out(r) for r in page], "next": nxt}

    async def update(self, who: Identity, sid: str, patch: SessionPatch) -> dict[str, Any]:
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                acc = await self._access(tx, who, sid)
                s = acc.session
                if not acc.host:
                    raise forbidden("only the host may change this session")
                if not s["is_active"]:
                    raise conflict("this session has ended", session=session_out(s))
                if patch.version is not None and patch.version != s["version"]:
                    raise conflict(f"stale version {patch.version}: the session is at version {s['version']}",
                                   session=session_out(s))
                if patch.is_private is not None and patch.is_private != bool(s["is_private"]):
                    raise TetherError("bad_request", "is_private: fixed when the session is created",
                                      status=422, field="is_private")
                fields = patch.model_dump(exclude_unset=True, exclude={"version", "is_private"})
                fields = {k: v for k, v in fields.items() if v is not None}
                if not fields:
                    return session_out(s)
                if fields.get("max_participants", s["max_participants"]) < s["current_participants"]:  # early, clear answer
                    raise conflict(f"max_participants: {s['current_participants']} participants are in the session",
                                   session=session_out(s))
                seats = fields.get("max_participants", s["max_participants"])
                sets = ", ".join(f"{k} = ?" for k in fields)
                values = [dumps(v) if k == "tags" else v for k, v in fields.items()]
                changed = await tx.execute(
                    f"""UPDATE sessions SET {sets}, version = version + 1, updated_at = ?
                        WHERE id = ? AND version = ? AND is_active = 1 AND current_participants <= ?""",
                    *values, now(), sid, s["version"], seats)
                if not changed:  # another writer got in between the read and this update
                    raise conflict("the session changed meanwhile; reload and retry", session=session_out(await self._row(tx, sid)))
                if "tags" in fields:
                    await self._set_tags(tx, sid, fields["tags"])
                session = session_out(await self._row(tx, sid))
                self._publish_session(change, "SESSION_UPDATED", session)
        return session

    async def end(self, who: Identity, sid: str) -> dict[str, Any]:
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                acc = await self._access(tx, who, sid)
                if not acc.host:
                    raise forbidden("only the host may end this session")
                if not acc.session["is_active"]:
                    raise conflict("this session has already ended", session=session_out(acc.session))
                session, message = await self._end(tx, sid, "The session has ended")
                change.emit(f"sessions.{sid}", "MESSAGE_CREATED", message)
                self._publish_session(change, "SESSION_ENDED", session)
        return session

    async def _end(self, tx: Queries, sid: str, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
        ts = now()
        await tx.execute("UPDATE session_participants SET left_at = ? WHERE session_id = ? AND left_at IS NULL", ts, sid)
        await tx.execute(
            """UPDATE sessions SET is_active = 0, current_participants = 0, ended_at = ?, updated_at = ?,
                   version = version + 1 WHERE id = ?""", ts, ts, sid)
        message = await self._system(tx, sid, text)
        return session_out(await self._row(tx, sid)), message

    # -- participants -----------------------------------------------------------

    async def join(self, who: Identity, sid: str, body: JoinIn) -> dict[str, Any]:
        user = self.actor(who, body.user_id)
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                acc = await self._access(tx, who, sid, user)
                s = acc.session
                if not s["is_active"]:
                    raise conflict("this session has ended")
                if acc.present:  # another device of the same user: still one seat
                    return {"joined": False, "session": session_out(s), "participant": participant_out(acc.part, s["host_id"])}  # type: ignore[arg-type]
                ts = now()
                name = body.user_name or (acc.part["user_name"] if acc.part else user)
                fresh = await tx.execute(
                    """INSERT INTO session_participants (session_id, user_id, user_name, joined_at, left_at)
                       VALUES (?, ?, ?, ?, NULL)
                       ON CONFLICT (session_id, user_id) DO UPDATE
                       SET user_name = excluded.user_name, joined_at = excluded.joined_at, left_at = NULL
                       WHERE session_participants.left_at IS NOT NULL""",
                    sid, user, name, ts)
                part = await tx.fetchone(
                    "SELECT * FROM session_participants WHERE session_id = ? AND user_id = ?", sid, user)
                if not fresh:  # the same user's concurrent join from another node won
                    return {"joined": False, "session": session_out(await self._row(tx, sid)),
                            "participant": participant_out(part, s["host_id"])}  # type: ignore[arg-type]
                seated = await tx.execute(
                    """UPDATE sessions SET current_participants = current_participants + 1
                       WHERE id = ? AND is_active = 1 AND current_participants < max_participants""", sid)
                if not seated:  # raising rolls the participant row back
                    now_row = await self._row(tx, sid)
                    if not now_row["is_active"]:
                        raise conflict("this session has ended")
                    raise conflict(f"session is full: all {now_row['max_participants']} seats are taken")
                message = await self._system(tx, sid, f"{name} joined")
                session = session_out(await self._row(tx, sid))
                participant = participant_out(part, session["host_id"])  # type: ignore[arg-type]
                change.emit(f"sessions.{sid}", "PARTICIPANT_JOINED", {
                    "session_id": sid, "participant": participant, "current_participants": session["current_participants"]})
                change.emit(f"sessions.{sid}", "MESSAGE_CREATED", message)
                if not session["is_private"]:
                    change.emit("sessions", "SESSION_UPDATED", session)
        return {"joined": True, "session": session, "participant": participant}

    async def leave(self, who: Identity, sid: str, body: LeaveIn) -> dict[str, Any]:
        """Leave; a leaving host hands the role to the earliest-joined participant, or ends an empty session."""
        user = self.actor(who, body.user_id)
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                acc = await self._access(tx, who, sid, user)
                ts = now()
                left = await tx.execute(
                    "UPDATE session_participants SET left_at = ? WHERE session_id = ? AND user_id = ? AND left_at IS NULL",
                    ts, sid, user)
                if not left:
                    raise conflict(f"{user} is not in this session")
                await tx.execute("UPDATE sessions SET current_participants = current_participants - 1 WHERE id = ?", sid)
                name = acc.part["user_name"] if acc.part else user
                messages = [await self._system(tx, sid, f"{name} left")]
                kind = None
                if acc.session["host_id"] == user:
                    heir = await tx.fetchone(
                        """SELECT user_id, user_name FROM session_participants WHERE session_id = ? AND left_at IS NULL
                           ORDER BY joined_at, user_id LIMIT 1""", sid)
                    if heir is None:
                        session, msg = await self._end(tx, sid, "The session has ended: the host left")
                        kind = "SESSION_ENDED"
                    else:
                        await tx.execute("UPDATE sessions SET host_id = ?, version = version + 1, updated_at = ? WHERE id = ?",
                                         heir["user_id"], ts, sid)
                        msg = await self._system(tx, sid, f"{heir['user_name']} is now the host")
                        kind = "SESSION_UPDATED"
                    messages.append(msg)
                part = await tx.fetchone(
                    "SELECT * FROM session_participants WHERE session_id = ? AND user_id = ?", sid, user)
                session = session_out(await self._row(tx, sid))
                still_reader = acc.invited or not session["is_active"]
                participant = participant_out(part, session["host_id"])  # type: ignore[arg-type]
                channel = f"sessions.{sid}"
                change.emit(channel, "PARTICIPANT_LEFT", {
                    "session_id": sid, "participant": participant, "current_participants": session["current_participants"]})
                for msg in messages:
                    change.emit(channel, "MESSAGE_CREATED", msg)
                if kind:
                    self._publish_session(change, kind, session)
                elif not session["is_private"]:
                    change.emit("sessions", "SESSION_UPDATED", session)
            if not still_reader:
                # Someone who left no longer reads the chat nor sees who is there: every node
                # re-checks their subscriptions of the session and of its presence.
                await self.node.access.recheck([channel, f"presence.{channel}"], [user])
        return {"left": True, "session": session, "participant": participant}

    async def participants(self, who: Identity, sid: str) -> dict[str, Any]:
        acc = await self._access(self.node.db, who, sid)
        rows = await self.node.db.fetchall(
            "SELECT * FROM session_participants WHERE session_id = ? ORDER BY joined_at, user_id", sid)
        return {"participants": [participant_out(r, acc.session["host_id"]) for r in rows]}

    async def invite(self, who: Identity, sid: str, body: InviteIn) -> dict[str, Any]:
        if not valid_id(body.user_id):
            raise TetherError("bad_request", "user_id: not a valid user id", status=422, field="user_id")
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                acc = await self._access(tx, who, sid)
                if not acc.host:
                    raise forbidden("only the host may invite to this session")
                if not acc.session["is_active"]:
                    raise conflict("this session has ended")
                ts = now()
                fresh = await tx.execute(
                    """INSERT INTO session_invites (session_id, user_id, invited_by, invited_at) VALUES (?, ?, ?, ?)
                       ON CONFLICT (session_id, user_id) DO NOTHING""", sid, body.user_id, who.user_id, ts)
                session = session_out(acc.session)
                if fresh:
                    change.emit(f"users.{body.user_id}", "SESSION_INVITED",
                                {"session": session, "invited_by": who.user_id})
        return {"session_id": sid, "user_id": body.user_id, "invited": True}

    # -- chat -------------------------------------------------------------------

    async def post(self, who: Identity, sid: str, body: MessageIn) -> dict[str, Any]:
        user = self.actor(who, body.user_id)
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                acc = await self._access(tx, who, sid, user)
                if not acc.session["is_active"]:
                    raise conflict("this session has ended")
                if not acc.present:
                    raise forbidden("only participants post in this session: join it first")
                message = await self._insert_message(tx, sid, user, acc.part["user_name"], body.message, body.message_type)  # type: ignore[index]
                change.emit(f"sessions.{sid}", "MESSAGE_CREATED", message)
        return message

    async def stream_author(self, who: Identity, sid: str, user_id: str | None) -> tuple[str, str]:
        """Who a stream into the chat is from: a present participant (or a backend with the API key,
        for a participant or, naming nobody, as the server itself): ``(user_id, user_name)``."""
        user = self.actor(who, user_id)
        acc = await self._access(self.node.db, who, sid, user)
        if not acc.session["is_active"]:
            raise conflict("this session has ended")
        if who.is_server and user_id is None:
            return user, "Server"
        if not acc.present:
            raise forbidden("only participants stream into this session: join it first")
        return user, acc.part["user_name"]  # type: ignore[index]

    async def post_stream(self, who: Identity, sid: str, stream_id: str, text: str, meta: dict[str, Any]) -> dict[str, Any]:
        """A finished stream as one chat message (once per stream: a repeat returns the stored one)."""
        async with self._lock(sid):
            async with self.node.change() as change:
                tx = change.tx
                done = await tx.fetchone(
                    """SELECT m.*, x.stream_id FROM session_stream_messages x JOIN session_messages m
                       ON m.session_id = x.session_id AND m.seq = x.seq WHERE x.stream_id = ?""", stream_id)
                if done is not None:
                    return message_out(done)
                author = meta["user_id"]
                acc = await self._access(tx, who, sid, author)
                if not acc.session["is_active"]:
                    raise conflict("this session has ended")
                if not (acc.present or (who.is_server and author == who.user_id)):
                    raise forbidden("only participants post in this session: the stream's writer left it")
                message = await self._insert_message(tx, sid, author, meta["user_name"], text, meta["message_type"],
                                                     stream_id)
                change.emit(f"sessions.{sid}", "MESSAGE_CREATED", message)
        return message

    async def messages(self, who: Identity, sid: str, query: MessagesQuery) -> dict[str, Any]:
        """A page of messages, oldest first, by ``seq`` cursor: newest page, ``before`` (older) or ``after`` (newer)."""
        acc = await self._access(self.node.db, who, sid)
        if not acc.reader:
            raise forbidden("only participants read this session's chat: join it first")
        where, args = ["m.session_id = ?"], [sid]
        if query.after is not None:
            where.append("m.seq > ?")
            args.append(await self._cursor(sid, "after", query.after))
        if query.before is not None:
            where.append("m.seq < ?")
            args.append(await self._cursor(sid, "before", query.before))
        order = "ASC" if query.after is not None else "DESC"
        rows = await self.node.db.fetchall(
            f"""SELECT m.*, x.stream_id FROM session_messages m
                LEFT JOIN session_stream_messages x ON x.session_id = m.session_id AND x.seq = m.seq
                WHERE {' AND '.join(where)} ORDER BY m.seq {order} LIMIT ?""",
            *args, query.limit + 1)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        if order == "DESC":
            rows.reverse()
        return {"messages": [message_out(r) for r in rows], "has_more": more}

    async def _cursor(self, sid: str, field: str, cursor: str) -> int:
        """A page cursor as a seq: a seq itself, or the seq of the message with that id."""
        if cursor.isdigit():
            seq = int(cursor)
            if seq > INT_MAX:
                raise TetherError("bad_request", f"{field}: a seq is at most {INT_MAX}", status=422, field=field)
            return seq
        row = await self.node.db.fetchone(
            "SELECT seq FROM session_messages WHERE session_id = ? AND id = ?", sid, cursor)
        if row is None:
            raise TetherError("bad_request", f"{field}: no message of this session has the id {cursor[:64]!r} "
                                             "(give a message's seq or id)", status=422, field=field)
        return int(row["seq"])

    async def may_subscribe(self, who: Identity, channel: str) -> None:
        if who.is_server:
            return
        acc = await self._access(self.node.db, who, channel.split(".", 1)[1])
        if not acc.reader:
            raise forbidden(f"only participants follow {channel!r}: join the session first")


def _sid(data: dict[str, Any]) -> str:
    sid = data.get("session_id")
    if not isinstance(sid, str) or not sid:
        raise TetherError("bad_request", "session_id: required string", status=422, field="session_id")
    return sid


class ChatStreams:
    """The sink of ``sessions.{id}`` streams (see tether.core.sinks): participants (or the API key)
    stream a message into the chat; the finished text is stored once as a chat message."""

    max_chars = MAX_MESSAGE

    def __init__(self, domain: Sessions, types: tuple[str, ...]) -> None:
        self.domain, self.types = domain, types
        self.default = "text" if "text" in types else types[0]

    async def accept(self, who: Identity, channel: str, meta: dict[str, Any]) -> dict[str, Any]:
        extra = set(meta) - {"message_type", "user_id"}
        if extra:
            raise TetherError("bad_request", f"data.{sorted(extra)[0]}: not a field of a chat stream "
                              "(message_type, user_id)", status=422, field=f"data.{sorted(extra)[0]}")
        kind = meta.get("message_type", self.default)
        if kind not in self.types:
            raise TetherError("bad_request", f"data.message_type: must be one of {', '.join(self.types)}",
                              status=422, field="data.message_type")
        user_id = meta.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise TetherError("bad_request", "data.user_id: a user id string", status=422, field="data.user_id")
        user, name = await self.domain.stream_author(who, channel.split(".", 1)[1], user_id)
        return {"message_type": kind, "user_id": user, "user_name": name}

    def check(self, content: str) -> None:
        if not content.strip():
            raise TetherError("bad_request", "content: a stream into a chat must end with text (it is blank)",
                              status=422, field="content")
        if len(content) > self.max_chars:
            raise TetherError("too_large", f"content: a chat message holds at most {self.max_chars} characters",
                              field="content")

    async def store(self, who: Identity, channel: str, stream_id: str, content: str, meta: dict[str, Any]) -> Any:
        return await self.domain.post_stream(who, channel.split(".", 1)[1], stream_id, content, meta)


class SessionsFeature(Feature):
    name = "sessions"

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.domain = Sessions(node)
        types = node.settings.chat_message_types()
        self.message_in = message_model(types)
        node.stream_sinks.register("sessions.*", ChatStreams(self.domain, types))

    async def start(self) -> None:
        await self.node.db.migrate(SCHEMA)

    def namespaces(self) -> list[Namespace]:
        s = self.node.settings
        return [
            Namespace("sessions", "any", "server", s.history_size, s.history_ttl, "browse list of public live sessions"),
            Namespace("sessions.*", self.domain.may_subscribe, "none", s.history_size, s.history_ttl,
                      "one live session: its participants and invitees"),
        ]

    def ops(self) -> dict[str, Op]:
        d = self.domain

        def op(fn: Any, model: type[BaseModel] | None = None, with_sid: bool = True) -> Op:
            async def handler(conn: Connection, data: dict[str, Any]) -> Any:
                args: list[Any] = [conn.identity]
                if with_sid:
                    args.append(_sid(data))
                if model is not None:
                    args.append(validate(model, data))
                return await fn(*args)
            return handler

        return {
            "SESSION_CREATE": op(d.create, SessionIn, with_sid=False),
            "SESSION_LIST": op(d.browse, ListQuery, with_sid=False),
            "SESSION_GET": op(d.get),
            "SESSION_UPDATE": op(d.update, SessionPatch),
            "SESSION_END": op(d.end),
            "SESSION_JOIN": op(d.join, JoinIn),
            "SESSION_LEAVE": op(d.leave, LeaveIn),
            "SESSION_INVITE": op(d.invite, InviteIn),
            "SESSION_PARTICIPANTS": op(d.participants),
            "SESSION_MESSAGE": op(d.post, self.message_in),
            "SESSION_MESSAGES": op(d.messages, MessagesQuery),
        }

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/sessions", tags=["sessions"])
        d = self.domain

        @router.post("", status_code=201)
        async def create(body: SessionIn, node: NodeDep, who: Caller,
                         idempotency_key: str | None = Header(None)) -> dict[str, Any]:
            """Create a session; the caller is its host and first participant."""
            return await once(node, who, "rest:POST sessions", idempotency_key, lambda: d.create(who, body))  # type: ignore[no-any-return]

        @router.get("")
        async def browse(who: Caller, q: str | None = Query(None, max_length=200),
                         category: str | None = Query(None, max_length=64), tag: str | None = Query(None, max_length=32),
                         limit: int = Query(20, ge=1, le=100),
                         after: str | None = Query(None, max_length=200, description="the previous page's 'next'",
                                                   json_schema_extra={"pattern": r"^([^|]*\|.+)?$"})) -> dict[str, Any]:
            """Active sessions, newest first: public ones and the private ones you belong to or are invited to."""
            query = validate(ListQuery, {k: v for k, v in
                                         dict(q=q, category=category, tag=tag, limit=limit, after=after).items() if v is not None})
            return await d.browse(who, query)

        @router.get("/{session_id}")
        async def get(session_id: str, who: Caller) -> dict[str, Any]:
            return await d.get(who, session_id)

        @router.patch("/{session_id}")
        async def update(session_id: str, body: SessionPatch, who: Caller) -> dict[str, Any]:
            """Host only. A stale ``version`` gets 409 with the current session."""
            return await d.update(who, session_id, body)

        @router.delete("/{session_id}")
        async def end(session_id: str, who: Caller) -> dict[str, Any]:
            """End the session (host only)."""
            return await d.end(who, session_id)

        @router.post("/{session_id}/join")
        async def join(session_id: str, node: NodeDep, who: Caller, body: JoinIn | None = None,
                       idempotency_key: str | None = Header(None)) -> dict[str, Any]:
            return await once(node, who, f"rest:POST sessions/{session_id}/join", idempotency_key, lambda: d.join(who, session_id, body or JoinIn()))  # type: ignore[no-any-return]

        @router.post("/{session_id}/leave")
        async def leave(session_id: str, node: NodeDep, who: Caller, body: LeaveIn | None = None,
                        idempotency_key: str | None = Header(None)) -> dict[str, Any]:
            return await once(node, who, f"rest:POST sessions/{session_id}/leave", idempotency_key, lambda: d.leave(who, session_id, body or LeaveIn()))  # type: ignore[no-any-return]

        @router.post("/{session_id}/invite")
        async def invite(session_id: str, body: InviteIn, who: Caller) -> dict[str, Any]:
            """Host only: let a user see, follow and join a private session."""
            return await d.invite(who, session_id, body)

        @router.get("/{session_id}/participants")
        async def participants(session_id: str, who: Caller) -> dict[str, Any]:
            return await d.participants(who, session_id)

        async def post(session_id: str, body: MessageIn, node: NodeDep, who: Caller,
                       idempotency_key: str | None = Header(None)) -> dict[str, Any]:
            return await once(node, who, f"rest:POST sessions/{session_id}/messages", idempotency_key, lambda: d.post(who, session_id, body))  # type: ignore[no-any-return]

        post.__annotations__["body"] = self.message_in  # this node's message types, in validation and OpenAPI
        router.post("/{session_id}/messages", status_code=201)(post)

        @router.get("/{session_id}/messages")
        async def messages(session_id: str, who: Caller,
                           before: str | None = Query(None, min_length=1, max_length=128, pattern=CURSOR_PATTERN,
                                                      description="a message's seq or id: the page before it"),
                           after: str | None = Query(None, min_length=1, max_length=128, pattern=CURSOR_PATTERN,
                                                     description="a message's seq or id: the page after it"),
                           limit: int = Query(50, ge=1, le=200)) -> dict[str, Any]:
            """Oldest first. ``before``/``after`` take a message's ``seq`` or ``id``: older or newer pages,
            stable under new posts."""
            query = validate(MessagesQuery, {k: v for k, v in dict(before=before, after=after, limit=limit).items() if v is not None})
            return await d.messages(who, session_id, query)

        return router
