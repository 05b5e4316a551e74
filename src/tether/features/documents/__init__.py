"""Versioned JSON documents in collections: REST, WebSocket requests, events.

:class:`Documents` is the domain (SQL through ``node.db``, events through
``node.publish``); the REST routes and ``DOCUMENT_*`` ops are thin adapters
over it. Versions advance by a conditional ``UPDATE … WHERE version = ?`` whose
row count decides, so concurrent writers on any number of nodes never lose an
update. Who may see what is :mod:`tether.features.documents.access`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import zlib
from typing import Annotated, Any, Callable, Literal, Sequence

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from tether.core.auth import Identity
from tether.core.connection import Connection, Op
from tether.core.idempotency import answer
from tether.core.namespaces import Namespace
from tether.core.node import Feature
from tether.core.outbox import Change
from tether.features.documents.access import (
    Grant,
    collection_channel,
    document_channel,
    may_manage,
    may_read,
    may_write,
    parse_channel,
    readers_shrank,
    scope_channels,
    visible,
)
from tether.features.rest import Caller, JsonVersion, NodeDep, once
from tether.wire.errors import TetherError, forbidden, shown
from tether.wire.jsoncheck import INT_MAX
from tether.wire.jsonutil import dumps, loads
from tether.wire.timestamps import now_iso

COLLECTION_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
ID_PATTERN = r"^[A-Za-z0-9_.@+\-]{1,128}$"
MAX_DATA_BYTES = 256 * 1024
MAX_MEMBERS = 100
MAX_LIMIT = 1000
SCAN_LIMIT = 5000  # rows one filtered list request reads at most before handing back a cursor
ACCESS_CHANNEL = "internal.documents.access"  # node-to-node: drop subscribers who lost read access

_COLLECTION_RE = re.compile(COLLECTION_PATTERN)
_ID_RE = re.compile(ID_PATTERN)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS documents (
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        version BIGINT NOT NULL,
        data TEXT NOT NULL,
        owner TEXT NOT NULL,
        access TEXT NOT NULL,
        members TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        PRIMARY KEY (collection, id)
    )""",
    # One row per (document, member): lets a list query find shared documents portably.
    """CREATE TABLE IF NOT EXISTS document_members (
        collection TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (collection, doc_id, user_id)
    )""",
    "CREATE INDEX IF NOT EXISTS document_members_user ON document_members (user_id, collection)",
]

DocId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
UserId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Mode = Literal["private", "members", "public"]
# REST parameters (module level: the routes' annotations are resolved by name).
CollectionP = Annotated[str, Path(pattern=COLLECTION_PATTERN, description="collection name")]
IdP = Annotated[str, Path(pattern=ID_PATTERN, description="document id")]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]
# A version ETag ("3", W/"3" or 3), a comma list of them, or *: anything else is refused (400), not a mismatch.
_ETAG = r'(W/)?"?[0-9]{1,18}"?'
PRECONDITION_PATTERN = rf"^\s*(\*|{_ETAG}(\s*,\s*{_ETAG})*)\s*$"
_PRECONDITION_RE = re.compile(PRECONDITION_PATTERN)
IfMatch = Annotated[str | None, Header(alias="If-Match", json_schema_extra={"pattern": PRECONDITION_PATTERN})]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", json_schema_extra={"pattern": PRECONDITION_PATTERN})]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
After = Annotated[str | None, Query(pattern=ID_PATTERN)]
Version = Annotated[int | None, Query(ge=1, le=INT_MAX)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access: Mode | None = Field(None, description="private (owner only, default) | members | public")
    members: list[UserId] | None = Field(None, max_length=MAX_MEMBERS, description="user ids sharing the document")
    owner: UserId | None = Field(None, description="transfer or set the owner (the owner or the API key)")


class CreateBody(_Body):
    id: DocId | None = Field(None, description="client-chosen id; generated (time-ordered) when absent")
    data: dict[str, Any]


class ReplaceBody(_Body):
    data: dict[str, Any]
    version: JsonVersion | None = Field(None, description="the version this write is based on; stale -> 409")


class PatchBody(_Body):
    data: dict[str, Any] | None = Field(None, description="a JSON merge patch (RFC 7386) applied to data")
    version: JsonVersion | None = Field(None)


def invalid(field: str, message: str) -> TetherError:
    return TetherError("bad_request", f"{field}: {message}", status=422, field=field)


def parse(model: type[BaseModel], data: dict[str, Any], *drop: str) -> Any:
    """Validate a WebSocket request's data with the REST body model, naming the bad field."""
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in drop})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "data"
        raise invalid(field, first.get("msg", "invalid")) from None


def check_collection(value: Any) -> str:
    if not isinstance(value, str) or not _COLLECTION_RE.fullmatch(value):
        raise invalid("collection", "must be 1-64 letters, digits, _ or -")
    return value


def check_id(value: Any, field: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise invalid(field, "must be 1-128 letters, digits or _ . @ + -")
    return value


def new_id() -> str:
    """Time-ordered, so the default listing order is roughly creation order."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def parse_if_match(header: str | None) -> list[str] | None:
    """``"3"``, ``W/"3"``, ``3`` or a comma list of them; ``*`` matches any existing version."""
    if header is None:
        return None
    if not _PRECONDITION_RE.match(header):
        raise TetherError("bad_request", f"If-Match/If-None-Match must be * or version ETags such as \"3\", not {header[:40]!r}")
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def etag(doc: dict[str, Any]) -> str:
    return f'"{doc["version"]}"'


def grant_of(doc: dict[str, Any]) -> Grant:
    return Grant(doc["owner"], doc["access"], tuple(doc["members"]))


def _row_to_doc(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "collection": row["collection"],
        "version": int(row["version"]),
        "data": loads(row["data"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "created_by": row["created_by"],
        "updated_by": row["updated_by"],
        "owner": row["owner"],
        "access": row["access"],
        "members": loads(row["members"]),
    }


def _sized(data: Any) -> str:
    try:
        text = dumps(data)
    except TypeError as exc:  # orjson refuses nesting deeper than 254 levels
        raise invalid("data", f"cannot be stored: {exc}") from None
    if len(text) > MAX_DATA_BYTES:
        raise TetherError("too_large", f"data: {len(text)} bytes exceeds the limit of {MAX_DATA_BYTES}", field="data")
    return text


Filter = tuple[tuple[str, ...], Callable[[Any], bool]]


def _lookup(data: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False, None
        data = data[key]
    return True, data


def _matches(data: Any, filters: Sequence[Filter]) -> bool:
    for path, predicate in filters:
        present, value = _lookup(data, path)
        if not present or not predicate(value):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but ``true != 1``."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def query_filter(path: str, raw: str) -> Filter:
    """A REST ``data.a.b=value`` filter: equal to the string, or to its JSON reading (``3``, ``true``, ``null``)."""
    try:
        typed = loads(raw)
        alternatives = [raw] if isinstance(typed, (str, dict, list)) else [raw, typed]
    except ValueError:
        alternatives = [raw]
    return tuple(path.split(".")), lambda v: any(_same(v, a) for a in alternatives)


def exact_filter(path: str, value: Any) -> Filter:
    return tuple(path.split(".")), lambda v: _same(v, value)


class Documents:
    """The domain: every read and write of documents, with access checks and events."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._locks = [asyncio.Lock() for _ in range(256)]

    @property
    def db(self) -> Any:
        return self.node.db

    def _lock(self, collection: str, doc_id: str) -> asyncio.Lock:
        # Serializes writes to one document on this node, so its events leave in version order.
        return self._locks[zlib.crc32(f"{collection}/{doc_id}".encode()) % len(self._locks)]

    async def load(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT * FROM documents WHERE collection = ? AND id = ?", collection, doc_id)
        return _row_to_doc(row) if row is not None else None

    async def readable(self, who: Identity, collection: str, doc_id: str) -> dict[str, Any]:
        """The document, or 404 whether it is missing or hidden (no existence leak)."""
        doc = await self.load(collection, doc_id)
        if doc is None or not may_read(who, grant_of(doc)):
            raise TetherError("not_found", f"no document {shown(doc_id)} in collection {shown(collection)}")
        return doc

    def _new_grant(self, who: Identity, old: Grant, body: _Body) -> Grant:
        members = old.members if body.members is None else tuple(dict.fromkeys(body.members))
        new = Grant(body.owner or old.owner, body.access or old.access, members)
        if new != old and not may_manage(who, old):
            raise forbidden("only the document's owner may change its access, members or owner")
        if new.owner != old.owner and not who.is_server:
            # Nobody is made owner without consent: an owner that hands a document to a user who
            # did not ask for it (keeping itself as member) would read what they write into it.
            raise forbidden("owner: only the server API key may give a document to another user")
        return new

    # -- reads -------------------------------------------------------------------

    async def get(self, who: Identity, collection: str, doc_id: str) -> dict[str, Any]:
        return await self.readable(who, collection, doc_id)

    async def list(self, who: Identity, collection: str, *, limit: int = 50, after: str | None = None,
                   filters: Sequence[Filter] = ()) -> dict[str, Any]:
        """A page in id order; ``next`` is the cursor for the page after (``None`` at the end).

        Data filters are applied as rows are read, at most ``SCAN_LIMIT`` rows per
        call, so a sparse match may return a short page with a cursor: continue until
        ``next`` is ``None``.
        """
        sql = "SELECT * FROM documents d WHERE d.collection = ? AND d.id > ?"
        args: list[Any] = [collection]
        if not who.is_server:
            sql += (" AND (d.access = 'public' OR d.owner = ? OR (d.access <> 'private' AND EXISTS ("
                    "SELECT 1 FROM document_members m WHERE m.collection = d.collection AND m.doc_id = d.id"
                    " AND m.user_id = ?)))")
        sql += " ORDER BY d.id LIMIT ?"
        batch = limit + 1 if not filters else max(limit + 1, 200)
        cursor, found, scanned = after or "", [], 0
        while True:
            user_args = [] if who.is_server else [who.user_id, who.user_id]
            rows = await self.db.fetchall(sql, *args, cursor, *user_args, batch)
            for row in rows:
                cursor, scanned = row["id"], scanned + 1
                doc = _row_to_doc(row)
                if _matches(doc["data"], filters):
                    found.append(doc)
                    if len(found) > limit:
                        return {"documents": found[:limit], "next": found[limit - 1]["id"]}
            if len(rows) < batch:
                return {"documents": found, "next": None}
            if scanned >= SCAN_LIMIT:
                return {"documents": found, "next": cursor}

    # -- writes ------------------------------------------------------------------

    async def create(self, who: Identity, collection: str, body: CreateBody) -> dict[str, Any]:
        owner = body.owner or who.user_id
        if not who.may_act_for(owner):
            raise forbidden("owner: must be your own user id (only the API key may create for another user)")
        g = Grant(owner, body.access or "private", tuple(dict.fromkeys(body.members or ())))
        doc_id, now = body.id or new_id(), now_iso()
        doc = {"id": doc_id, "collection": collection, "version": 1, "data": body.data, "created_at": now,
               "updated_at": now, "created_by": who.user_id, "updated_by": who.user_id,
               "owner": g.owner, "access": g.access, "members": list(g.members)}
        text = _sized(body.data)
        answer(doc)  # what a retry gets if a crash follows the INSERT
        async with self._lock(collection, doc_id):
            if await self.load(collection, doc_id) is None:
                # A new incarnation of this id: its channel starts a new epoch with no history, so
                # whoever creates it now cannot replay a deleted predecessor's events with `since`.
                # Before the INSERT: a crash in between leaves an empty channel, never a leak.
                await self.node.broker.reset(document_channel(collection, doc_id))
            async with self.node.change() as change:
                tx = change.tx
                n = await tx.execute(
                    """INSERT INTO documents (collection, id, version, data, owner, access, members,
                       created_at, updated_at, created_by, updated_by) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (collection, id) DO NOTHING""",
                    collection, doc_id, text, g.owner, g.access, dumps(list(g.members)), now, now,
                    who.user_id, who.user_id,
                )
                if n == 1:
                    await self._set_members(tx, collection, doc_id, g.members)
                    self._announce(change, "DOCUMENT_CREATED", doc, None, g)
            if n != 1:
                current = await self.load(collection, doc_id)
                extra = {"document": current} if current and may_read(who, grant_of(current)) else {}
                raise TetherError("conflict", f"document {doc_id!r} already exists in collection {collection!r}", **extra)
        return doc

    async def replace(self, who: Identity, collection: str, doc_id: str, body: ReplaceBody,
                      if_match: list[str] | None = None) -> dict[str, Any]:
        return await self._update(who, collection, doc_id, body, if_match, lambda old: body.data)

    async def patch(self, who: Identity, collection: str, doc_id: str, body: PatchBody,
                    if_match: list[str] | None = None) -> dict[str, Any]:
        return await self._update(who, collection, doc_id, body, if_match,
                                  lambda old: old if body.data is None else merge_patch(old, body.data))

    def _preconditions(self, doc: dict[str, Any], version: int | None, if_match: list[str] | None) -> None:
        if if_match is not None and "*" not in if_match and str(doc["version"]) not in if_match:
            raise TetherError("conflict", f"If-Match does not match: the document is at version {doc['version']}",
                              status=412, document=doc)
        if version is not None and version != doc["version"]:
            raise TetherError("conflict", f"version {version} is stale: the document is at version {doc['version']}",
                              document=doc)

    async def _update(self, who: Identity, collection: str, doc_id: str, body: ReplaceBody | PatchBody,
                      if_match: list[str] | None, compute: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        async with self._lock(collection, doc_id):
            for _ in range(100):
                old = await self.readable(who, collection, doc_id)
                self._preconditions(old, body.version, if_match)
                g_old = grant_of(old)
                if not may_write(who, g_old):
                    raise forbidden(f"you may read but not change document {doc_id!r}")
                g_new = self._new_grant(who, g_old, body)
                data = compute(old["data"])
                text, now = _sized(data), now_iso()
                doc = {**old, "version": old["version"] + 1, "data": data, "updated_at": now,
                       "updated_by": who.user_id, "owner": g_new.owner, "access": g_new.access,
                       "members": list(g_new.members)}
                answer(doc)
                async with self.node.change() as change:
                    tx = change.tx
                    n = await tx.execute(
                        """UPDATE documents SET version = version + 1, data = ?, owner = ?, access = ?, members = ?,
                           updated_at = ?, updated_by = ? WHERE collection = ? AND id = ? AND version = ?""",
                        text, g_new.owner, g_new.access, dumps(list(g_new.members)), now, who.user_id,
                        collection, doc_id, old["version"],
                    )
                    if n == 1 and g_new.members != g_old.members:
                        await self._set_members(tx, collection, doc_id, g_new.members)
                    if n == 1:
                        self._announce(change, "DOCUMENT_UPDATED", doc, g_old, g_new)
                if n == 1:
                    await self._recheck(doc, g_old, g_new)
                    return doc
                # Another node wrote in between: re-read; a stated version now fails as a conflict.
        raise TetherError("unavailable", f"document {doc_id!r} is under heavy contention; retry")

    async def delete(self, who: Identity, collection: str, doc_id: str, version: int | None = None,
                     if_match: list[str] | None = None) -> dict[str, Any]:
        async with self._lock(collection, doc_id):
            for _ in range(100):
                old = await self.readable(who, collection, doc_id)
                self._preconditions(old, version, if_match)
                if not may_manage(who, grant_of(old)):
                    raise forbidden(f"only the owner may delete document {doc_id!r}")
                gone = {"id": doc_id, "collection": collection, "version": old["version"], "deleted": True,
                        "deleted_at": now_iso(), "deleted_by": who.user_id, "reason": "deleted"}
                answer(gone)
                async with self.node.change() as change:
                    n = await change.tx.execute("DELETE FROM documents WHERE collection = ? AND id = ? AND version = ?",
                                                collection, doc_id, old["version"])
                    if n == 1:
                        await self._set_members(change.tx, collection, doc_id, ())
                        self._announce(change, "DOCUMENT_DELETED", gone, grant_of(old), None)
                if n == 1:
                    await self._recheck(gone, grant_of(old), None)
                    return gone
        raise TetherError("unavailable", f"document {doc_id!r} is under heavy contention; retry")

    async def _set_members(self, tx: Any, collection: str, doc_id: str, members: tuple[str, ...]) -> None:
        await tx.execute("DELETE FROM document_members WHERE collection = ? AND doc_id = ?", collection, doc_id)
        for user in members:
            await tx.execute("INSERT INTO document_members (collection, doc_id, user_id) VALUES (?, ?, ?)",
                             collection, doc_id, user)

    # -- events ------------------------------------------------------------------

    def _announce(self, change: Change, type: str, payload: dict[str, Any], before: Grant | None,
                  after: Grant | None) -> None:
        """Announce one change on the document's channel, the collection channel and the per-user
        channels of those who may read it.

        On the collection channel every event carries the grant its recipients are chosen by
        (see ``access.visible``): a deletion its grant before. When an access change leaves
        someone unable to read the document, a ``DOCUMENT_DELETED`` (``reason: "access"``,
        ``deleted: false``) with the grant before goes first (exactly the readers before get
        it), then the update with the grant after. Per-user channels that could read it
        before but not after get such a notice too (without the grant). Subscribers of the document channel who
        lost read access are dropped on every node *before* the change is published there.
        """
        c, doc_id = payload["collection"], payload["id"]
        channel = document_channel(c, doc_id)
        emit = change.emit
        if before is not None and after is not None and before != after:
            emit(ACCESS_CHANNEL, "ACCESS_CHANGED", {"channel": channel, "owner": after.owner,
                                                    "access": after.access, "members": list(after.members)})
        emit(channel, type, payload)
        if after is None and before is not None:  # deleted: nobody keeps a subscription to a reusable id
            emit(ACCESS_CHANNEL, "ACCESS_CHANGED", {"channel": channel, "deleted": True})
        grant_before = None if before is None else {
            "owner": before.owner, "access": before.access, "members": list(before.members)}
        if type == "DOCUMENT_DELETED":
            emit(collection_channel(c), type, {**payload, **(grant_before or {})})
        else:
            if before is not None and after is not None and readers_shrank(before, after):
                emit(collection_channel(c), "DOCUMENT_DELETED", {
                    "id": doc_id, "collection": c, "version": payload["version"], "deleted": False,
                    "reason": "access", **(grant_before or {})})
            emit(collection_channel(c), type, payload)
        now_in, was_in = scope_channels(c, after), scope_channels(c, before)
        for ch in sorted(now_in):
            emit(ch, type, payload)
        if was_in - now_in:  # (a per-user channel's subscriber may read all it carries: no grant needed)
            left = payload if type == "DOCUMENT_DELETED" else {
                "id": doc_id, "collection": c, "version": payload["version"], "deleted": False, "reason": "access"}
            for ch in sorted(was_in - now_in):
                emit(ch, "DOCUMENT_DELETED", left)

    async def _recheck(self, payload: dict[str, Any], before: Grant | None, after: Grant | None) -> None:
        """The document's presence follows its read access (presence.{channel}): re-check its watchers."""
        if before is not None and before != after:
            await self.node.access.recheck([f"presence.{document_channel(payload['collection'], payload['id'])}"])


class _AccessWatch:
    """Subscribed on every node to ``ACCESS_CHANNEL`` like a connection: drops local
    subscribers of a document channel the moment they lose read access."""

    id = "documents-access-watch"

    def __init__(self, feature: "DocumentsFeature") -> None:
        self.feature = feature

    def deliver(self, channel: str, offset: int, text: str) -> None:
        self.feature.revoke(loads(text)["data"])

    def close(self, code: int, reason: str) -> None:
        """The broker lost this feed (``Hub.lost``): revocations may have been missed, so every
        local document subscriber resubscribes, and SUBSCRIBE checks read access again."""
        for channel, subs in list(self.feature.node.hub.channels.items()):
            parsed = parse_channel(channel)
            if parsed is not None and parsed[1] == "documents":
                for conn in list(subs):
                    conn.close(code, f"resync: document access changes were missed; resubscribe to {channel}")


class DocumentsFeature(Feature):
    name = "documents"

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.docs = Documents(node)
        self._watch = _AccessWatch(self)

    async def start(self) -> None:
        await self.node.db.migrate(SCHEMA)
        await self.node.hub.add(self._watch, ACCESS_CHANNEL)  # type: ignore[arg-type]

    def namespaces(self) -> list[Namespace]:
        s = self.node.settings
        return [
            Namespace(ACCESS_CHANNEL, "none", "none", 0, 60.0, "node-to-node access changes"),
            # A document's own channel and a user's scope carry only what their subscribers may read.
            Namespace("collections.*.*", self.may_subscribe, "server", s.history_size, s.history_ttl,
                      "a document's changes, or those a user may read (docs/documents.md)"),
            # A collection's channel carries every change: each subscriber gets what it may read.
            Namespace("collections.*", self.may_subscribe, "server", s.history_size, s.history_ttl,
                      "document changes, each to those who may read the document (docs/documents.md)",
                      visible=visible),
        ]

    async def may_subscribe(self, who: Identity, channel: str) -> None:
        parsed = parse_channel(channel)
        if parsed is None or not _COLLECTION_RE.fullmatch(parsed[0]):
            raise forbidden(f"{channel!r} is not a collections channel: use collections.{{collection}}, "
                            "collections.{collection}.documents.{id} or collections.{collection}.users.{userId}")
        collection, kind, rest = parsed
        if kind == "" or who.is_server:
            return
        if kind == "users":
            if rest != who.user_id:
                raise forbidden(f"only user {rest!r} may subscribe to {channel!r}")
            return
        doc = await self.docs.load(collection, rest)
        if doc is None or not may_read(who, grant_of(doc)):
            raise forbidden(f"no document {rest!r} you may read in collection {collection!r}")

    async def subscribed(self, conn: Connection, channel: str, data: dict[str, Any]) -> None:
        # Re-check after joining: an access change that landed between the check and
        # the join was not seen by the watch, but is in the database now.
        parsed = parse_channel(channel)
        if parsed is None or parsed[1] != "documents" or conn.identity.is_server:
            return
        doc = await self.docs.load(parsed[0], parsed[2])
        if doc is None or not may_read(conn.identity, grant_of(doc)):
            raise forbidden(f"no document {parsed[2]!r} you may read in collection {parsed[0]!r}")

    def revoke(self, notice: dict[str, Any]) -> None:
        """Drop this node's subscribers of ``notice["channel"]`` who may no longer read it (synchronous:
        it runs inside the broker's delivery, before the next event of that channel)."""
        channel = notice["channel"]
        subs = self.node.hub.channels.get(channel)
        if not subs:
            return
        grant = None if notice.get("deleted") else Grant(notice["owner"], notice["access"], tuple(notice["members"]))
        for conn in list(subs):
            if conn.identity.is_server or (grant is not None and may_read(conn.identity, grant)):
                continue
            reason = "document deleted" if grant is None else "read access revoked"
            if self.node.access.discard(conn, channel, reason):
                self.node.access.hooks(conn, channel)  # e.g. the presence this subscription held leaves

    # -- WebSocket requests --------------------------------------------------------

    def ops(self) -> dict[str, Op]:
        return {
            "DOCUMENT_CREATE": self.op_create,
            "DOCUMENT_GET": self.op_get,
            "DOCUMENT_LIST": self.op_list,
            "DOCUMENT_UPDATE": self.op_update,
            "DOCUMENT_PATCH": self.op_patch,
            "DOCUMENT_DELETE": self.op_delete,
        }

    _META = ("collection", "id", "idempotency_key", "channel")

    async def op_create(self, conn: Connection, data: dict[str, Any]) -> Any:
        body = parse(CreateBody, data, "collection", "idempotency_key", "channel")
        return await self.docs.create(conn.identity, check_collection(data.get("collection")), body)

    async def op_get(self, conn: Connection, data: dict[str, Any]) -> Any:
        return await self.docs.get(conn.identity, check_collection(data.get("collection")), check_id(data.get("id")))

    async def op_list(self, conn: Connection, data: dict[str, Any]) -> Any:
        limit, after, where = data.get("limit", 50), data.get("after"), data.get("filter") or {}
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}")
        if not isinstance(where, dict):
            raise invalid("filter", "must be an object of data field paths to values")
        filters = [exact_filter(k, v) for k, v in where.items()]
        return await self.docs.list(conn.identity, check_collection(data.get("collection")), limit=limit,
                                    after=None if after is None else check_id(after, "after"), filters=filters)

    async def op_update(self, conn: Connection, data: dict[str, Any]) -> Any:
        body = parse(ReplaceBody, data, *self._META)
        return await self.docs.replace(conn.identity, check_collection(data.get("collection")),
                                       check_id(data.get("id")), body)

    async def op_patch(self, conn: Connection, data: dict[str, Any]) -> Any:
        body = parse(PatchBody, data, *self._META)
        return await self.docs.patch(conn.identity, check_collection(data.get("collection")),
                                     check_id(data.get("id")), body)

    async def op_delete(self, conn: Connection, data: dict[str, Any]) -> Any:
        version = data.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise invalid("version", "must be a positive integer")
        return await self.docs.delete(conn.identity, check_collection(data.get("collection")),
                                      check_id(data.get("id")), version)

    # -- REST ------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/collections/{collection}/documents", tags=["documents"])
        docs = self.docs

        @router.post("", status_code=201)
        async def create(collection: CollectionP, body: CreateBody, node: NodeDep, who: Caller,
                         response: Response, idempotency_key: IdemKey = None) -> dict[str, Any]:
            """Create a document (201). A retried ``Idempotency-Key`` returns the first result."""
            doc = await once(node, who, f"rest:POST {collection}", idempotency_key, lambda: docs.create(who, collection, body))
            response.headers["ETag"] = etag(doc)
            return doc  # type: ignore[no-any-return]

        @router.get("")
        async def list_(collection: CollectionP, request: Request, who: Caller,
                        limit: Limit = 50, after: After = None) -> dict[str, Any]:
            """A page in id order; ``data.<path>=value`` query parameters filter on data fields."""
            filters = []
            for key, value in request.query_params.multi_items():
                if key.startswith("data.") and len(key) > 5:
                    filters.append(query_filter(key[5:], value))
                elif key not in ("limit", "after"):
                    raise invalid(key, "unknown query parameter: filter on data fields with data.<field>=<value>")
            return await docs.list(who, collection, limit=limit, after=after, filters=filters)

        @router.get("/{doc_id}")
        async def get(collection: CollectionP, doc_id: IdP, who: Caller, response: Response,
                      if_none_match: IfNoneMatch = None) -> Any:
            """The document, with its version as ``ETag``; ``If-None-Match`` with that tag answers 304."""
            doc = await docs.get(who, collection, doc_id)
            tags = parse_if_match(if_none_match)
            if tags is not None and ("*" in tags or str(doc["version"]) in tags):
                return Response(status_code=304, headers={"ETag": etag(doc)})
            response.headers["ETag"] = etag(doc)
            return doc

        @router.put("/{doc_id}")
        async def replace(collection: CollectionP, doc_id: IdP, body: ReplaceBody, node: NodeDep, who: Caller,
                          response: Response, if_match: IfMatch = None,
                          idempotency_key: IdemKey = None) -> dict[str, Any]:
            """Replace ``data``. ``version`` stale -> 409 with the current document; ``If-Match`` -> 412;
            neither -> last write wins."""
            doc = await once(node, who, f"rest:PUT {collection}/{doc_id}", idempotency_key,
                             lambda: docs.replace(who, collection, doc_id, body, parse_if_match(if_match)))
            response.headers["ETag"] = etag(doc)
            return doc  # type: ignore[no-any-return]

        @router.patch("/{doc_id}")
        async def patch(collection: CollectionP, doc_id: IdP, body: PatchBody, node: NodeDep, who: Caller,
                        response: Response, if_match: IfMatch = None,
                        idempotency_key: IdemKey = None) -> dict[str, Any]:
            """Merge ``data`` (JSON merge patch, RFC 7386) with the same version rules as PUT."""
            doc = await once(node, who, f"rest:PATCH {collection}/{doc_id}", idempotency_key,
                             lambda: docs.patch(who, collection, doc_id, body, parse_if_match(if_match)))
            response.headers["ETag"] = etag(doc)
            return doc  # type: ignore[no-any-return]

        @router.delete("/{doc_id}")
        async def delete(collection: CollectionP, doc_id: IdP, node: NodeDep, who: Caller,
                         version: Version = None, if_match: IfMatch = None,
                         idempotency_key: IdemKey = None) -> dict[str, Any]:
            """Delete (the owner); ``?version=`` or ``If-Match`` make it conditional."""
            return await once(node, who, f"rest:DELETE {collection}/{doc_id}", idempotency_key,  # type: ignore[no-any-return]
                              lambda: docs.delete(who, collection, doc_id, version, parse_if_match(if_match)))

        return router
