"""Who may read, write and manage a document, and which channels may carry its events.

Pure functions over an :class:`Identity` and a document's :class:`Grant`, so
REST, WebSocket requests and event delivery all ask the very same questions
(see docs/documents.md for the model in prose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.core.auth import Identity

MODES = ("private", "members", "public")


@dataclass(frozen=True)
class Grant:
    """A document's access setting: its owner, a mode, and the member list."""

    owner: str
    access: str = "private"
    members: tuple[str, ...] = ()

    def shares(self, user_id: str) -> bool:
        """Listed members count under ``members`` and ``public``, never under ``private``."""
        return self.access != "private" and user_id in self.members


def may_read(who: Identity, g: Grant) -> bool:
    return who.is_server or g.access == "public" or who.user_id == g.owner or g.shares(who.user_id)


def may_write(who: Identity, g: Grant) -> bool:
    """Change ``data``: the owner and the members (a public document is readable by all, writable by them)."""
    return who.is_server or who.user_id == g.owner or g.shares(who.user_id)


def may_manage(who: Identity, g: Grant) -> bool:
    """Change ``access``/``members``/``owner`` or delete: the owner (and backends)."""
    return who.is_server or who.user_id == g.owner


def readers_shrank(before: Grant, after: Grant) -> bool:
    """Whether someone who could read a document under ``before`` cannot under ``after``."""
    if after.access == "public":
        return False
    if before.access == "public":
        return True

    def readers(g: Grant) -> set[str]:
        return {g.owner} | (set(g.members) if g.access == "members" else set())

    return bool(readers(before) - readers(after))


# -- channels ------------------------------------------------------------------
#
# collections.{c}.documents.{id}  every change of one document; subscribers need read access
# collections.{c}                 every change of every document of the collection, each event
#                                 sent only to the subscribers who may read that document
#                                 (``visible``, the namespace's per-recipient filter)
# collections.{c}.users.{u}       changes of the non-public documents user u reads (owner or member)
#
# Events on collections.* carry the grant they are judged by (``owner``, ``access``,
# ``members`` in their data): the document's after the change, or for DOCUMENT_DELETED
# its grant before, so exactly those who could read it learn that it left their view.


def visible(who: Identity, event: dict[str, Any]) -> bool:
    """The per-recipient filter of the ``collections.*`` channels: an event about a document
    goes to those who may read it under the grant it carries; one without a grant (a server
    publish, a notice on a channel whose subscribers were checked at SUBSCRIBE) cannot be judged."""
    data = event.get("data")
    if not isinstance(data, dict) or "owner" not in data:
        return True
    members = data.get("members")
    return may_read(who, Grant(str(data["owner"]), str(data.get("access", "private")),
                               tuple(members) if isinstance(members, list) else ()))


def document_channel(collection: str, doc_id: str) -> str:
    return f"collections.{collection}.documents.{doc_id}"


def collection_channel(collection: str) -> str:
    return f"collections.{collection}"


def scope_channels(collection: str, g: Grant | None) -> set[str]:
    """The per-user channels of the users who may read a non-public document with grant ``g``
    (a public document's changes are on the collection channel alone)."""
    if g is None or g.access == "public":
        return set()
    readers = {g.owner} | (set(g.members) if g.access == "members" else set())
    return {f"collections.{collection}.users.{u}" for u in readers}


def parse_channel(channel: str) -> tuple[str, str, str] | None:
    """``collections.c`` -> (c, "", ""); ``collections.c.documents.d`` -> (c, "documents", d);
    ``collections.c.users.u`` -> (c, "users", u); anything else -> None."""
    parts = channel.split(".", 3)
    if len(parts) == 2 and parts[0] == "collections" and parts[1]:
        return parts[1], "", ""
    if len(parts) == 4 and parts[0] == "collections" and parts[2] in ("documents", "users") and parts[1] and parts[3]:
        return parts[1], parts[2], parts[3]
    return None
