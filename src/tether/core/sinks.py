"""Where a finished stream goes when its channel belongs to a feature (a live session's chat).

The streams feature knows how to stream (deltas, coalescing, late readers); the
feature that owns a channel knows who may write there and how to keep the
result. The owner registers a :class:`StreamSink` for its channel pattern on the
node (``node.stream_sinks``); the streams feature asks the node for the sink of a
channel. Neither imports the other: they meet here, in the core.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Protocol

from tether.core.auth import Identity


class StreamSink(Protocol):
    """A channel owner's say over streams on its channels."""

    #: The most characters the stored result may hold: deltas beyond it are refused.
    max_chars: int

    async def accept(self, who: Identity, channel: str, meta: dict[str, Any]) -> dict[str, Any]:
        """At STREAM_START: raise a TetherError to refuse ``who``; return the metadata to keep
        (it is what STREAM_STARTED and STREAM_STATE carry, and what :meth:`store` gets back)."""
        ...

    def check(self, content: str) -> None:
        """At STREAM_END, before the stream ends: raise a TetherError if ``content`` cannot be stored
        (the stream then stays open, so the writer can still send a valid end)."""
        ...

    async def store(self, who: Identity, channel: str, stream_id: str, content: str, meta: dict[str, Any]) -> Any:
        """After the stream ended (once: the end is decided before this is called): keep the content.
        Must be idempotent per ``stream_id``. What it returns goes into STREAM_END's ACK."""
        ...


class StreamSinks:
    """Channel pattern (``fnmatch``, like namespaces) -> the sink of its owner; first match wins."""

    def __init__(self) -> None:
        self._sinks: list[tuple[re.Pattern[str], StreamSink]] = []

    def register(self, pattern: str, sink: StreamSink) -> None:
        self._sinks.append((re.compile(fnmatch.translate(pattern)), sink))

    def find(self, channel: str) -> StreamSink | None:
        for regex, sink in self._sinks:
            if regex.match(channel):
                return sink
        return None
