"""Configure logging for a BoltLink process: JSON lines or terminal text.

Only the CLI calls :func:`logging_config`; library modules just log to
their named loggers (``boltlink.redirect``, ``boltlink.api``, ...). A JSON
line carries ``ts``, ``level``, ``logger`` and ``msg``, plus
``request_id`` when logged while serving a request and ``trace_id`` and
``span_id`` when tracing is on. Access lines (granian's) add the request's
``method``, ``path``, ``status`` and ``duration_ms``.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections.abc import MutableMapping
from typing import Any

import orjson

from boltlink import tracing

__all__ = [
    "JsonFormatter",
    "ProbeFilter",
    "bind_request",
    "logging_config",
    "request_id",
]

#: The ASGI scope of the request being served, set per request (cheap: the
#: id is made only when a line is logged).
_SCOPE: contextvars.ContextVar[MutableMapping[str, Any] | None] = (
    contextvars.ContextVar("boltlink_request_scope", default=None)
)
_ID_KEY = "boltlink.request_id"
_PROBE_PATHS = frozenset({"/health", "/ready"})


def bind_request(scope: MutableMapping[str, Any]) -> None:
    """Make ``scope`` the request that log lines of this task belong to."""
    _SCOPE.set(scope)


def request_id() -> str | None:
    """Return the current request's id: its ``X-Request-ID``, else a new one."""
    scope = _SCOPE.get()
    if scope is None:
        return None
    found: str | None = scope.get(_ID_KEY)
    if found is None:
        found = _sent_id(scope) or secrets.token_hex(8)
        scope[_ID_KEY] = found
    return found


def _sent_id(scope: MutableMapping[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")[:128]
            return text if text.isprintable() else None
    return None


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
        rid = request_id()
        if rid is not None:
            body["request_id"] = rid
        ids = tracing.current_ids()
        if ids is not None:
            body["trace_id"], body["span_id"] = ids
        if record.name == "granian.access" and isinstance(record.args, dict):
            body.update(_access_fields(record.args))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


def _access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": atoms.get("method"),
        "path": atoms.get("path"),
        "status": atoms.get("status"),
        "duration_ms": round(float(atoms.get("dt_ms", 0.0)), 3),
        "client": atoms.get("addr"),
    }


# Control characters in a logged value (a request path, a header) would let
# a client forge or break lines of a text log; they are written escaped.
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


class TextFormatter(logging.Formatter):
    """Render one record as one terminal line, control characters escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Return the line of ``record``'s message (a traceback follows apart)."""
        record.message = record.message.translate(_CONTROLS)
        return super().formatMessage(record)


class ProbeFilter(logging.Filter):
    """Drop access lines of the ``/health`` and ``/ready`` probes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a probe's access line."""
        args = record.args
        return not (isinstance(args, dict) and args.get("path") in _PROBE_PATHS)


def logging_config(level: str, fmt: str, *, log_probes: bool = False) -> dict[str, Any]:
    """Return a ``logging.config.dictConfig`` mapping for every process."""
    formatter = (
        {"()": "boltlink.logs.JsonFormatter"}
        if fmt == "json"
        else {
            "()": "boltlink.logs.TextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        }
    )
    access: dict[str, Any] = {"level": "INFO"}
    if not log_probes:
        access["filters"] = ["probes"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"probes": {"()": "boltlink.logs.ProbeFilter"}},
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
            "granian.access": access,
            # yoyo narrates every migration step at INFO; BoltLink logs a
            # summary line of its own.
            "yoyo": {"level": "WARNING"},
            # Each failed ClickHouse call is one BoltLink error line; the
            # HTTP client's retry notes would only repeat it.
            "urllib3.connectionpool": {"level": "ERROR"},
            "clickhouse_connect": {"level": "ERROR"},
        },
    }
