"""Configure logging for a BoltLink process: JSON lines or terminal text.

Only the CLI calls :func:`logging_config`; library modules just log to
their named loggers (``boltlink.redirect``, ``boltlink.api``, ...).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "logging_config"]


class JsonFormatter(logging.Formatter):
    """Render one record as one JSON object with ``ts``, ``level``, ``logger``."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """Return a ``logging.config.dictConfig`` mapping for every process."""
    formatter = (
        {"()": "boltlink.logs.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "_granian": {"level": level},
            "granian.access": {"level": "INFO"},
            # yoyo narrates every migration step at INFO; BoltLink logs a
            # summary line of its own.
            "yoyo": {"level": "WARNING"},
        },
    }
