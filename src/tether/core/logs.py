"""Structured logs: one JSON object a line on stderr."""

from __future__ import annotations

import logging
import sys
import time

from tether.wire.jsonutil import dumps


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            text = self.formatException(record.exc_info)
            # Bounded: a deep recursion's traceback is ~100 KB; the last frames say where it broke.
            entry["exc"] = text if len(text) <= MAX_EXC else "…" + text[-MAX_EXC:]
        return dumps(entry)


MAX_EXC = 8192  # characters of traceback kept per log line


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type, message and the line that raised it."""
    where, tb = "", exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
