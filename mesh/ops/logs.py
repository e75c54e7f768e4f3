"""Logging for the ``mesh`` command and for applications that want the same format.

The library only ever calls ``logging.getLogger("mesh...")`` with %-style arguments, so nothing
is formatted unless a handler wants the record; it is quiet by default (warnings and errors
reach Python's last-resort handler, nothing else). Per-message events (a dropped frame, a
handshake refused) are logged at DEBUG behind ``isEnabledFor``, so the hot path pays one
level check. ``configure`` turns it on: text (``time level logger message key=value``) or one
JSON object per line, with any ``extra={...}`` fields of the record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra={...}`` fields."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{when}.{int(record.msecs):03d} {record.levelname:<7} {record.name}: "
        line += record.getMessage()
        extra = " ".join(f"{k}={v}" for k, v in fields(record).items())
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        found = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **fields(record),
        }
        if record.exc_info:
            found["exception"] = self.formatException(record.exc_info)
        return json.dumps(found, default=str)


def configure(verbosity: int = 0, as_json: bool = False, stream: TextIO | None = None) -> None:
    """Send the mesh's logs to ``stream`` (stderr): ``verbosity`` 0 warnings, 1 info, 2 debug."""
    logger = logging.getLogger("mesh")
    for handler in list(logger.handlers):
        if getattr(handler, "_mesh_configured", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler._mesh_configured = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(LEVELS[min(max(verbosity, 0), 2)])
    logger.propagate = False
