"""Open the clients every role shares: the link store, Redis and ClickHouse."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import tempfile
from typing import Any
from urllib.parse import urlsplit

from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings
from boltlink.store import LinkStore, create_store

__all__ = [
    "chdb_open_error",
    "connect_clickhouse",
    "connect_redis",
    "open_store",
    "redis_url",
]

logger = logging.getLogger("boltlink.db")


async def open_store(settings: Settings) -> LinkStore:
    """Return the open link store these settings name."""
    store = create_store(
        settings.database_dsn,
        schema=settings.database_schema,
        pool_size=settings.database_pool_size,
    )
    await store.open()
    return store


def redis_url(settings: Settings) -> str:
    """Return the Redis URL: the configured server, else the embedded Valkey."""
    if settings.redis_url:
        return str(settings.redis_url)
    if settings.embedded_redis_url:
        return str(settings.embedded_redis_url)
    raise RuntimeError("embedded valkey URL missing; the CLI starts it first")


def connect_redis(settings: Settings, **options: Any) -> Any:
    """Return an asyncio Redis client with bounded timeouts.

    Timeouts stay short so a stopped Redis degrades a redirect (served from
    the local cache, click buffered) instead of stalling it.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    # One quick retry covers a dropped connection; more would hold a
    # redirect for seconds while Redis is down (redis-py's default backs
    # off for up to ten).
    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))
    options.setdefault("socket_timeout", 2.0)
    options.setdefault("socket_connect_timeout", 1.0)
    options.setdefault("health_check_interval", 15)
    return aioredis.Redis.from_url(redis_url(settings), **options)


def connect_clickhouse(settings: Settings) -> Any:
    """Return a clickhouse-connect client for a server or for chDB."""
    import clickhouse_connect

    dsn = settings.clickhouse_dsn
    if not dsn.startswith("chdb:"):
        try:
            return clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:
            where = _host_port(dsn)
            raise BackendUnavailable(
                f"cannot reach clickhouse at {where}: {_reason(exc)}"
            ) from exc

    folder = dsn.removeprefix("chdb://")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise BackendUnavailable(
            f"cannot create chDB folder {folder!r}: {_reason(exc)}"
        ) from exc
    if folder not in _CHDB_OPENED_HERE and _chdb_locked_elsewhere(folder):
        raise _chdb_busy(folder)
    client = _open_chdb(dsn, folder)
    _CHDB_OPENED_HERE.add(folder)
    return client


def _open_chdb(dsn: str, folder: str) -> Any:
    """Open chDB on ``folder``; raise one clear error if it cannot."""
    import clickhouse_connect

    # chDB prints why it cannot open a folder on stderr and raises only
    # "Error initializing EmbeddedServer: ." (chdb 4.4): catch what it
    # prints, to put the reason in the error, and pass the rest on.
    saved = os.dup(2)
    with tempfile.TemporaryFile() as printed:
        sys.stderr.flush()
        os.dup2(printed.fileno(), 2)
        failure: Exception | None = None
        try:
            client = clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:
            failure = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        printed.seek(0)
        said = printed.read().decode(errors="replace")

    if failure is None:
        _pass_on(said)
        return client
    error = chdb_open_error(folder, said, str(failure))
    _pass_on(said, but=str(error))
    raise error from failure


def chdb_open_error(folder: str, printed: str, raised: str) -> BackendUnavailable:
    """Return the error for a chDB folder that did not open.

    ``printed`` is what chDB wrote on stderr meanwhile, ``raised`` the text
    of its exception; the reason is the first ClickHouse error in either.
    The folder is "in use" only when its lock is what failed.
    """
    reason = _chdb_reason(printed) or _chdb_reason(raised) or raised[:300]
    if "Cannot lock file" in reason or _chdb_locked_elsewhere(folder):
        return _chdb_busy(folder)
    return BackendUnavailable(f"cannot open chDB folder {folder!r}: {reason}")


def _chdb_busy(folder: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"chDB folder {folder!r} is in use by another process (is boltlink "
        "serve running on it?); chDB allows one process per folder"
    )


# "Code: 76. DB::ErrnoException: <reason>, Stack trace ...": the reason.
_CLICKHOUSE_ERROR = re.compile(
    r"Code: \d+\. DB::\w*Exception: (.+?)(?:, Stack trace|$)"
)


def _chdb_reason(text: str) -> str:
    """Return the reason of the first ClickHouse error in ``text``, or ''."""
    for line in text.splitlines():
        found = _CLICKHOUSE_ERROR.search(line)
        if found:
            return found.group(1).strip()[:300]
    return ""


def _pass_on(printed: str, but: str = "") -> None:
    """Write what chDB printed to stderr, less lines ``but`` already carries."""
    kept = [
        line
        for line in printed.splitlines(keepends=True)
        if not (but and (reason := _chdb_reason(line)) and reason in but)
    ]
    if kept:
        os.write(2, "".join(kept).encode())


def _host_port(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 8123}"


def _reason(exc: BaseException) -> str:
    """Return the innermost OS-level cause of ``exc`` in a few words."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# chDB folders this process has opened: its own lock must not count as busy.
_CHDB_OPENED_HERE: set[str] = set()


def _chdb_locked_elsewhere(folder: str) -> bool:
    # ClickHouse holds an flock on its folder's `status` file while open.
    # Probe it first, so a busy folder is one clear error rather than the
    # engine's own messages; the probe lets go before chDB opens.
    path = os.path.join(folder, "status")
    try:
        status = open(path, "rb")  # noqa: SIM115
    except OSError:
        # Missing (a new folder), or not a file: chDB tells what is wrong.
        return False
    with status:
        try:
            fcntl.flock(status.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(status.fileno(), fcntl.LOCK_UN)
    return False
