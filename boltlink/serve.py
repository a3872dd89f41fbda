"""Start ``boltlink serve``: the embedded Valkey if needed, then granian."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from boltlink.errors import ConfigError
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
            AnalyticsStore.for_settings(client, settings).migrate()
        finally:
            client.close()
        yield "analytics: schema created or up to date"


def serve_forever(settings: Settings, log_config: dict[str, Any]) -> None:
    """Run the server until SIGTERM or SIGINT; stop the embedded Valkey after."""
    from boltlink.embedded import EmbeddedValkey

    settings = dataclasses.replace(settings, host=_listen_address(settings.host))
    _check_port_free(settings.host, settings.port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _data_dir_lock(settings):
        valkey = None
        if settings.uses_embedded_redis:
            valkey = EmbeddedValkey(settings.data_dir / "valkey")
            valkey.start()
            url = Secret(valkey.url)
            settings = dataclasses.replace(settings, embedded_redis_url=url)
        try:
            if not settings.database_dsn.startswith("postgres"):
                migrate(settings.database_dsn, schema=settings.database_schema)
            # Each worker opens the store in its lifespan, where a failure is
            # a traceback per worker; one check here is one clear line.
            asyncio.run(_check_store(settings))
            with _metrics_folder() as folder:
                settings = dataclasses.replace(settings, metrics_dir=folder)
                _run_with_consumers(settings, log_config)
        finally:
            # Stopped last, after granian drained its workers, so their
            # final clicks and acknowledgements still reach it.
            if valkey is not None:
                valkey.stop()


def _run_with_consumers(settings: Settings, log_config: dict[str, Any]) -> None:
    """Run granian; when serve runs the consumers, in a child beside it."""
    if not settings.inprocess_workers:
        _run_granian(settings, log_config, consumers="separate")
        return
    from boltlink.workers.child import ConsumerProcess

    consumers = ConsumerProcess(settings)
    consumers.start()
    try:
        # The workers serve only; they read analytics through the child.
        web = dataclasses.replace(settings, inprocess_workers=False)
        _run_granian(web, log_config, consumers=f"child pid={consumers.pid}")
    finally:
        # After the workers: their last clicks are in the stream by now.
        consumers.stop()


@contextlib.contextmanager
def _metrics_folder() -> Iterator[Path]:
    """Make a fresh folder for the workers' metric files; remove it after.

    prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` when a worker
    imports it, so it is set here, before granian starts any worker. Files
    left from an earlier server would add its counts to this one's.
    """
    folder = Path(tempfile.mkdtemp(prefix="boltlink-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _check_store(settings: Settings) -> None:
    from boltlink.backends import open_store

    store = await open_store(settings)
    await store.close()


def _listen_address(host: str) -> str:
    # Granian takes an IP address; resolve names such as "localhost".
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve BOLTLINK_HOST {host!r}: {exc}") from None
    return str(infos[0][4][0])


def _check_port_free(host: str, port: int) -> None:
    # Granian binds with SO_REUSEPORT, so a second server on a taken port
    # would start and share its traffic; refuse instead.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}"
            ) from None


@contextlib.contextmanager
def _data_dir_lock(settings: Settings) -> Iterator[None]:
    """Hold the data folder for this server; refuse a second one on it."""
    uses_chdb = settings.clickhouse_dsn.startswith("chdb:")
    embedded = (
        settings.database_url is None
        or settings.uses_embedded_redis
        or (settings.inprocess_workers and uses_chdb)
    )
    if not embedded:
        yield
        return
    with open(settings.data_dir / "serve.lock", "a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"data folder {str(settings.data_dir)!r} is in use by another "
                "boltlink serve; give this one its own BOLTLINK_DATA_DIR"
            ) from None
        yield


def _run_granian(
    settings: Settings, log_config: dict[str, Any], *, consumers: str
) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    export_to_environ(settings)
    logger.info(
        "serving profile=%s address=%s:%d workers=%d public_url=%s store=%s "
        "consumers=%s",
        settings.profile,
        settings.host,
        settings.port,
        settings.workers,
        settings.public_url,
        "postgres" if settings.database_dsn.startswith("postgres") else "sqlite",
        consumers,
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
        # Workers stop on their own within the shutdown timeout (the app's
        # lifespan keeps to it); this only ends one that hangs.
        workers_kill_timeout=math.ceil(settings.shutdown_timeout) + 5,
    ).serve()
