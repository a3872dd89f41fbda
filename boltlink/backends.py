"""Open the clients every role shares: the link store, Redis and ClickHouse."""

from __future__ import annotations

import fcntl
import logging
import os
from typing import Any
from urllib.parse import urlsplit

from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings
from boltlink.store import LinkStore, create_store

__all__ = ["connect_clickhouse", "connect_redis", "open_store", "redis_url"]

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
    os.makedirs(folder, exist_ok=True)
    busy = BackendUnavailable(
        f"chDB folder {folder!r} is in use by another process (is boltlink "
        "serve running on it?); chDB allows one process per folder"
    )
    if folder not in _CHDB_OPENED_HERE and _chdb_locked_elsewhere(folder):
        raise busy
    try:
        client = clickhouse_connect.get_client(dsn=dsn)
    except Exception as exc:
        raise busy from exc
    _CHDB_OPENED_HERE.add(folder)
    return client


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
    if not os.path.exists(path):
        return False
    with open(path, "rb") as status:
        try:
            fcntl.flock(status.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(status.fileno(), fcntl.LOCK_UN)
    return False
