"""Start ``boltlink serve``: the embedded Valkey if needed, then granian."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from boltlink.settings import Secret, Settings, export_to_environ
from boltlink.store import migrate

__all__ = ["migrate_all", "serve_forever"]

logger = logging.getLogger("boltlink.serve")


def migrate_all(settings: Settings, *, analytics: bool = True) -> Iterator[str]:
    """Migrate the link store, then ClickHouse; yield one line per step."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    applied = migrate(settings.database_dsn, schema=settings.database_schema)
    yield f"link store: {len(applied)} migrations applied"
    if analytics:
        from boltlink.analytics import AnalyticsStore
        from boltlink.backends import connect_clickhouse

        client = connect_clickhouse(settings)
        try:
            AnalyticsStore(client).migrate()
        finally:
            client.close()
        yield "analytics: schema up to date"


def serve_forever(settings: Settings, log_config: dict[str, Any]) -> None:
    """Run the server until SIGTERM or SIGINT; stop the embedded Valkey after."""
    from boltlink.embedded import EmbeddedValkey

    valkey = None
    if settings.uses_embedded_redis:
        valkey = EmbeddedValkey(settings.data_dir / "valkey")
        valkey.start()
        settings = dataclasses.replace(settings, embedded_redis_url=Secret(valkey.url))
    try:
        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            migrate(settings.database_dsn, schema=settings.database_schema)
        _run_granian(settings, log_config)
    finally:
        if valkey is not None:
            valkey.stop()


def _run_granian(settings: Settings, log_config: dict[str, Any]) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    export_to_environ(settings)
    profile = "embedded" if settings.inprocess_workers else "production"
    logger.info(
        "serving profile=%s address=%s:%d workers=%d public_url=%s store=%s",
        profile,
        settings.host,
        settings.port,
        settings.workers,
        settings.public_url,
        "postgres" if settings.database_url else "sqlite",
    )
    Server(
        "boltlink.asgi:create_worker_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        factory=True,
        log_dictconfig=log_config,
        log_access=settings.access_log,
        respawn_failed_workers=True,
    ).serve()
