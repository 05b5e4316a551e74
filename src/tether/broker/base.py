"""The broker interface (after Centrifugo's): pub/sub between nodes plus per-channel history.

History and pub/sub live behind one interface because the offset must be
assigned, stored and fanned out as one ordered step: the embedded broker does
it under a per-channel lock around one SQLite transaction, the Redis broker in
one Lua script. Either way, every node sees a channel's events in offset order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

#: Called once per event per node: (channel, offset, encoded frame, connection id to skip).
Deliver = Callable[[str, int, str, "str | None"], None]


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str


@dataclass(slots=True)
class Stream:
    """What history holds after an offset.

    ``complete`` is true when ``events`` are *all* the events after ``after``:
    nothing was trimmed by the history window in between.
    """

    position: Position
    events: list[tuple[int, str]] = field(default_factory=list)
    complete: bool = True


#: An outbox row: its id and its creation time (ids restart in a re-created database; the pair
#: does not, so a marker left by an old row can never stand for a new one).
OutboxRow = tuple[int, float]


#: Called when a node can no longer vouch for a channel's live feed (its missed events left
#: history, or its epoch changed): the channel's local subscribers must resubscribe with ``since``.
Lost = Callable[[str], None]


class Broker(ABC):
    on_lost: Lost | None = None
    #: Whether :meth:`publish` deletes its ``outbox`` row in its own commit (the broker keeps
    #: history in the database); otherwise the outbox deletes it after the publish.
    takes_outbox_rows = False

    @abstractmethod
    async def start(self, deliver: Deliver) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def publish(
        self,
        channel: str,
        type: str,
        data: Any,
        *,
        history_size: int,
        history_ttl: float,
        exclude: str | None = None,
        outbox: "OutboxRow | None" = None,
    ) -> Position:
        """Assign the next offset, store the event in the history window, fan it out.

        ``outbox`` names the event's row in the outbox (``tether.core.outbox``): an
        event published for it before answers that first position and is not published
        again.

        Publishes are ordered by *call*, not by completion: the event is queued
        before the first suspension, so concurrent publishes started in some order
        get a channel's offsets in that order (pipelined requests rely on it)."""

    @abstractmethod
    async def read(self, channel: str, after: int | None, *, history_ttl: float | None = None, limit: int = 10_000) -> Stream:
        """The channel's position and, when ``after`` is given, the stored events past it
        (none older than ``history_ttl`` seconds)."""

    @abstractmethod
    async def reset(self, channel: str) -> Position:
        """Start a new epoch of ``channel`` and drop its history (offsets go on, never reused):
        a resource re-created under the same name must not hand its predecessor's events to
        whoever owns it now. A position from before answers ``recovered: false``."""

    def outbox_settled(self, rows: list[OutboxRow]) -> None:
        """These outbox rows are deleted: they will never be published again."""

    async def subscribe(self, channel: str) -> None:
        """This node has its first local subscriber on ``channel``."""

    async def unsubscribe(self, channel: str) -> None:
        """This node's last local subscriber on ``channel`` left."""

    async def healthy(self) -> bool:
        return True
