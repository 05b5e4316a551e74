"""Channel namespaces: which rules apply to a channel name.

A namespace is matched by an ``fnmatch`` pattern (``public.*``, ``users.*``,
``admin``). The first match wins, so operator overrides (``--channels-file``)
go in front of the built-in ones. Each says how much history the channel keeps
and who may subscribe and publish. A rule is a name (``any``, ``owner``,
``admin``, ``server``, ``none``) or, for a module's own channels, an async
function that raises :class:`TetherError` to refuse.

A namespace may also filter per recipient (``visible``): a subscriber then gets
only the events it may see, live and in a SUBSCRIBE's replay, so its offsets on
such a channel can have gaps.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Union

from tether.core.auth import Identity
from tether.wire.errors import forbidden
from tether.wire.jsonutil import loads

log = logging.getLogger("tether.namespaces")

Check = Callable[[Identity, str], Awaitable[None]]
#: A per-recipient filter: may this subscriber see this event (the decoded frame)?
Visible = Callable[[Identity, dict[str, Any]], bool]
Rule = Union[str, Check]
RULE_NAMES = ("any", "owner", "admin", "server", "none")


@dataclass
class Namespace:
    pattern: str
    subscribe: Rule = "any"
    publish: Rule = "any"
    history_size: int = 1000
    history_ttl: float = 3600.0
    description: str = ""
    #: A subscriber receives an event of this namespace only when ``visible(identity, event)``
    #: is true (``event`` is the decoded frame: type, channel, offset, data); a filter returns
    #: true for the events it cannot judge. ``None``: everyone receives everything.
    visible: Visible | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(fnmatch.translate(self.pattern))

    def matches(self, channel: str) -> bool:
        return self._regex.match(channel) is not None


# The last event judged and its decoded form: a fan-out hands the same text to every
# subscriber of a channel, so it is decoded once, not once per recipient.
_last: tuple[str, Any] = ("", None)


def sees(visible: Visible, who: Identity, text: str) -> bool:
    """Whether ``who`` may receive the encoded event ``text`` under ``visible``.

    An event that does not decode to an object cannot be judged: visible. A filter
    that fails hides the event (an error must never leak one)."""
    global _last
    last_text, event = _last
    if text is not last_text:
        try:
            event = loads(text)
        except ValueError:
            return True
        _last = (text, event)
    if not isinstance(event, dict):
        return True
    try:
        return bool(visible(who, event))
    except Exception as exc:
        log.error("visibility filter failed on %s: %s", event.get("channel"), exc)
        return False


def owner_of(channel: str) -> str:
    """``users.alice`` -> ``alice``."""
    return channel.split(".", 1)[1] if "." in channel else ""


async def check(rule: Rule, who: Identity, channel: str, action: str) -> None:
    if callable(rule):
        await rule(who, channel)
        return
    if who.is_server or rule == "any":
        return
    if rule == "owner" and owner_of(channel) == who.user_id:
        return
    if rule == "admin" and who.is_admin:
        return
    reason = {
        "owner": f"only its owner may {action} channel {channel!r}",
        "admin": f"only admin-role tokens may {action} channel {channel!r}",
        "server": f"only the server API key may {action} channel {channel!r}",
    }.get(str(rule), f"nobody may {action} channel {channel!r}")
    raise forbidden(reason)


#: Channels whose namespace is remembered (each publish and subscribe looks it up, and a
#: lookup tries every pattern in order); past this many the memory starts over.
FOUND_CACHE = 65_536


class Namespaces:
    def __init__(self, namespaces: list[Namespace] | None = None) -> None:
        self._list: list[Namespace] = list(namespaces or [])
        self._found: dict[str, Namespace] = {}

    def add(self, *namespaces: Namespace, first: bool = False) -> None:
        if first:
            self._list[0:0] = namespaces
        else:
            self._list.extend(namespaces)
        self._found.clear()

    def find(self, channel: str) -> Namespace:
        ns = self._found.get(channel)
        if ns is not None:
            return ns
        for ns in self._list:
            if ns.matches(channel):
                if len(self._found) >= FOUND_CACHE:
                    self._found.clear()
                self._found[channel] = ns
                return ns
        raise forbidden(f"no namespace matches channel {channel!r} (see docs/protocol.md: public.*, users.{{id}}, …)")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._list)

    async def may_subscribe(self, who: Identity, channel: str) -> Namespace:
        ns = self.find(channel)
        await check(ns.subscribe, who, channel, "subscribe to")
        return ns

    async def may_publish(self, who: Identity, channel: str) -> Namespace:
        ns = self.find(channel)
        await check(ns.publish, who, channel, "publish to")
        return ns


def builtin(history_size: int, history_ttl: float) -> list[Namespace]:
    return [
        Namespace("public.*", "any", "any", history_size, history_ttl, "any signed-in user"),
        Namespace("users.*", "owner", "owner", history_size, history_ttl, "one user's devices"),
        Namespace("admin", "admin", "admin", history_size, history_ttl, "admin-role tokens"),
    ]


def load_overrides(path: Path) -> list[Namespace]:
    """Read ``[{"pattern", "subscribe"?, "publish"?, "history_size"?, "history_ttl"?}]``."""
    try:
        items = loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read channels file {path}: {exc}") from None
    if not isinstance(items, list):
        raise SystemExit(f"channels file {path} must hold a JSON list of namespaces")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("pattern"), str):
            raise SystemExit(f"channels file {path}: every entry needs a 'pattern' string")
        for key in ("subscribe", "publish"):
            if item.get(key, "any") not in RULE_NAMES:
                raise SystemExit(f"channels file {path}: {key} must be one of {', '.join(RULE_NAMES)}")
        size, ttl = item.get("history_size", 0), item.get("history_ttl", 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise SystemExit(f"channels file {path}: {item['pattern']}: history_size must be a whole number, 0 or more")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0 or ttl == float("inf"):
            raise SystemExit(f"channels file {path}: {item['pattern']}: history_ttl must be a number of seconds above 0")
        out.append(Namespace(**{k: v for k, v in item.items() if k in Namespace.__dataclass_fields__ and not k.startswith("_") and k != "visible"}))
    return out


