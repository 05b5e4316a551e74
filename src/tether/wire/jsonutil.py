"""Fast JSON in one place, so the encoder can be swapped once."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def dumpb(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)


JSONDecodeError = orjson.JSONDecodeError
