"""Who may read, write and manage a document, and which channels may carry its events.

Pure functions over an :class:`Identity` and a document's :class:`Grant`, so
REST, WebSocket requests and event delivery all ask the very same questions
(see docs/documents.md for the model in prose).
"""

from __future__ import annotations

from dataclasses import dataclass

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


# -- channels ------------------------------------------------------------------
#
# collections.{c}.documents.{id}  every change of one document; subscribers need read access
# collections.{c}                 changes of the collection's *public* documents (any signed-in user)
# collections.{c}.users.{u}       changes of the non-public documents user u reads (owner or member)
#
# So a collection-level channel only ever carries what all of its possible
# subscribers may read, and no event needs filtering per recipient.


def document_channel(collection: str, doc_id: str) -> str:
    return f"collections.{collection}.documents.{doc_id}"


def scope_channels(collection: str, g: Grant | None) -> set[str]:
    """The collection-level channels whose subscribers may read a document with grant ``g``."""
    if g is None:
        return set()
    if g.access == "public":
        return {f"collections.{collection}"}
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
