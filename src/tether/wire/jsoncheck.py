"""What any JSON a client sends must be, checked once at the edge (WebSocket frames and REST bodies).

orjson already refuses ``NaN``/``Infinity``, numbers that overflow a double
(``1e309``), lone surrogates and invalid UTF-8. What it lets through but the
rest of the server cannot store or re-encode is refused here, naming the field:
nesting deeper than :data:`MAX_DEPTH` (orjson encodes at most 255 levels) and
integers outside the signed 64-bit range (SQL ``BIGINT``; orjson encodes at most
unsigned 64 bits). A client learns of it as a 422 / ``bad_request``, never as a
5xx or ``unavailable`` when the value is stored or sent on.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tether.wire.errors import TetherError
from tether.wire.jsonutil import JSONDecodeError, loads

MAX_DEPTH = 64  # nested objects/arrays in one request, the frame or body itself included
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def invalid(field: str, message: str) -> TetherError:
    return TetherError("bad_request", f"{field}: {message}", status=422, field=field)


def _name(key: Any) -> str:
    """A client's key as it may appear in an error: short, and encodable (no lone surrogate)."""
    return str(key)[:64].encode("utf-8", "replace").decode()


def check(value: Any, field: str = "body") -> None:
    """Raise ``bad_request`` (422) naming the first field that is too deep or out of range."""
    _walk(value, field, 1)


def _walk(value: Any, field: str, depth: int) -> None:
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise invalid(field, f"nested deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if isinstance(item, (dict, list, int, float)):
                _walk(item, f"{field}.{_name(key)}" if len(field) < 200 else field, depth + 1)
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            raise invalid(field, f"nested deeper than {MAX_DEPTH} levels")
        for i, item in enumerate(value):
            if isinstance(item, (dict, list, int, float)):
                _walk(item, f"{field}[{i}]" if len(field) < 200 else field, depth + 1)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise invalid(field, "integer out of range (signed 64-bit: -2^63 to 2^63-1)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(field, "must be a finite number (no NaN, Infinity or overflow)")


_LONG_DIGITS = re.compile(rb"\d{19}")  # orjson reads an integer outside [-2^63, 2^64) as a float: find it in the text


class _OutOfRange(int):
    """Stands in for an integer orjson would have turned into a float."""


def _integer(text: str) -> int:
    n = int(text)
    return n if INT_MIN <= n <= INT_MAX else _OutOfRange(0)


class _NotFinite(float):
    """Stands in for NaN/Infinity while naming the field they sit in."""


def _constant(_: str) -> float:
    return _NotFinite("nan")


def _number(text: str) -> float:
    f = float(text)
    return f if math.isfinite(f) else _NotFinite("inf")


def _first_marker(value: Any, field: str) -> str | None:
    if isinstance(value, (_NotFinite, _OutOfRange)):
        return field
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_marker(item, f"{field}.{_name(key)}" if isinstance(value, dict) else f"{field}[{key}]")
        if found:
            return found
    return None


def strict_loads(raw: str | bytes, field: str = "body") -> Any:
    """Parse client JSON; raise ``bad_request`` (422) naming the field where it can."""
    try:
        value = loads(raw)
    except JSONDecodeError as exc:
        where = _locate(raw, field)
        if where is not None:
            raise invalid(where, "must be a finite number (NaN, Infinity and overflowing numbers are not JSON)") from None
        raise TetherError("bad_request", f"{field} is not valid JSON: {exc}", status=422, field=field) from None
    check(value, field)
    if len(raw) >= 19:
        text = raw if isinstance(raw, bytes) else raw.encode()
        if _LONG_DIGITS.search(text):
            where = _locate(text, field)
            if where is not None:
                raise invalid(where, "integer out of range (signed 64-bit: -2^63 to 2^63-1)")
    return value


def _locate(raw: str | bytes, field: str) -> str | None:
    """Where a NaN, Infinity, overflowing float or out-of-range integer sits (the stdlib
    parser reads them all as written; orjson refuses the first and rounds the last)."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_number, parse_int=_integer)
        return _first_marker(value, field)
    except (ValueError, RecursionError, TypeError):
        return None
