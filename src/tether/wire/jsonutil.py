"""Fast JSON in one place, so the encoder can be swapped once."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any) -> str:
    return dumpb(obj).decode()


def dumpb(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
        return orjson.dumps(_doubles(obj))


def _doubles(obj: Any) -> Any:
    """Integers beyond 64 bits as doubles: what a JavaScript or Swift peer would read them as anyway."""
    if isinstance(obj, bool) or not isinstance(obj, (int, dict, list, tuple)):
        return obj
    if isinstance(obj, int):
        if -(1 << 63) <= obj < (1 << 64):
            return obj
        try:
            return float(obj)
        except OverflowError:
            raise TypeError("a number is beyond the range of a JSON double") from None
    if isinstance(obj, dict):
        return {k: _doubles(v) for k, v in obj.items()}
    return [_doubles(v) for v in obj]


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)


JSONDecodeError = orjson.JSONDecodeError
