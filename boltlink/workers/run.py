"""Start the consumers of one role and stop them cleanly.

``run_role`` is what ``boltlink aggregate`` and ``boltlink ingest`` run, and
what ``boltlink serve`` runs as background jobs in the embedded profile.
Besides its consumers, each role process trims the click streams behind
the slowest group (see :mod:`boltlink.workers.retention`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from boltlink.analytics import AnalyticsStore, acquire, release
from boltlink.analytics.relay import RelayServer, chdb_folder, relay_address
from boltlink.backends import connect_redis, open_store
from boltlink.clicks import stream_names
from boltlink.settings import Settings
from boltlink.workers.consumer import Probe, Sink, StreamConsumer, create_groups
from boltlink.workers.retention import run_dedup_pruning, run_retention
from boltlink.workers.sinks import AggregateSink, IngestSink

__all__ = ["COLLECT_EVERY", "ROLES", "run_role", "tune_collector"]

ROLES = ("aggregate", "ingest")

#: Allocations between two collections of the youngest generation in a
#: consumer process (Python's default is 700).
COLLECT_EVERY = 50_000


def tune_collector() -> None:
    """Set the garbage collector of a process that runs consumers.

    A batch keeps tens of thousands of objects alive at once (decoded
    clicks, their rows). With Python's default thresholds they were walked
    again and again while the batch was built, and each batch set off full
    collections over everything the process had loaded: about 3 µs of a
    click's 11 µs of Python time in ``ingest``. So the modules alive at
    start are frozen out of the collector's sight, and the young generation
    is collected every :data:`COLLECT_EVERY` allocations. The batch's
    objects are freed by their reference counts either way; the collector
    only looks for cycles.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(COLLECT_EVERY, 20, 10)


def consumer_name(role: str, index: int) -> str:
    """Return a consumer name unique across hosts, processes and tasks."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{index}"


async def _open_sink(
    role: str, settings: Settings, redis: Any
) -> tuple[Sink, Probe, Callable[[], Awaitable[None]], str]:
    """Return the role's sink, its health probe, how to close it, its version."""
    if role == "aggregate":
        store = await open_store(settings)
        version = await _store_version(settings)
        return AggregateSink(store), store.ping, store.close, version
    # One analytics store per process: in the embedded profile the stats
    # API shares it (chDB allows one client per data folder).
    analytics = await asyncio.to_thread(acquire, settings)
    sink = IngestSink.for_settings(analytics, settings, redis)
    relay = await _serve_relay(analytics, settings)

    async def close() -> None:
        if relay is not None:
            await relay.close()
        sink.close()
        await asyncio.to_thread(release, analytics)

    return sink, analytics.ping, close, await _clickhouse_version(analytics)


async def _serve_relay(analytics: Any, settings: Settings) -> RelayServer | None:
    # The holder of a chDB folder answers the analytics reads of every other
    # process (the other serve workers), which cannot open it themselves.
    if not analytics.embedded:
        return None
    relay = RelayServer(analytics, relay_address(chdb_folder(settings)))
    try:
        await relay.start()
    except OSError as exc:
        logging.getLogger("boltlink.ingest").warning(
            "analytics relay not started, other processes cannot read stats: %s",
            exc,
        )
        return None
    return relay


async def _store_version(settings: Settings) -> str:
    """Return ``sqlite=X`` or ``postgres=X`` for the start line."""
    if not settings.database_dsn.startswith("postgres"):
        return f"sqlite={sqlite3.sqlite_version}"
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.database_dsn, connect_timeout=5
        )
    except psycopg.Error as exc:
        return f"postgres=unreachable({type(exc).__name__})"
    async with conn:
        number = conn.info.server_version
    return f"postgres={number // 10000}.{number % 10000}"


async def _clickhouse_version(analytics: AnalyticsStore) -> str:
    """Return ``clickhouse=X`` for the start line (chDB: its engine version)."""
    try:
        rows = await analytics.query("SELECT version()")
    except Exception as exc:
        return f"clickhouse=unreachable({type(exc).__name__})"
    return f"clickhouse={rows[0][0]}"


async def run_role(
    role: str, settings: Settings, stop: asyncio.Event, consumers: int | None = None
) -> None:
    """Run ``consumers`` consumers of ``role`` until ``stop`` is set."""
    logger = logging.getLogger(f"boltlink.{role}")
    count = consumers or settings.consumers
    redis = connect_redis(settings, socket_timeout=settings.block_ms / 1000 + 5)
    try:
        sink, probe, close_sink, version = await _open_sink(role, settings, redis)
    except BaseException:
        await redis.aclose()
        raise
    streams = stream_names(settings.redis_prefix, settings.stream_partitions)
    ingest = role == "ingest"
    batch_size = settings.ingest_batch_size if ingest else settings.batch_size
    linger_ms = settings.ingest_linger_ms if ingest else settings.linger_ms
    workers = [
        StreamConsumer(
            redis,
            streams,
            sink=sink,
            consumer=consumer_name(role, index),
            prefix=settings.redis_prefix,
            batch_size=batch_size,
            block_ms=settings.block_ms,
            linger_ms=linger_ms,
            claim_idle_ms=settings.claim_idle_ms,
            claim_interval=settings.claim_interval,
            max_deliveries=settings.max_deliveries,
            probe=probe,
        )
        for index in range(count)
    ]
    info = await _server_version(redis)
    logger.info(
        "%s started streams=%s group=%s consumers=%s batch_size=%d block_ms=%d "
        "linger_ms=%d claim_idle_ms=%d max_deliveries=%d redis=%s %s",
        role,
        ",".join(streams),
        sink.name,
        ",".join(w.consumer for w in workers),
        batch_size,
        settings.block_ms,
        linger_ms,
        settings.claim_idle_ms,
        settings.max_deliveries,
        info,
        version,
    )
    tasks = [
        asyncio.create_task(w.run(stop), name=f"consumer-{w.consumer}") for w in workers
    ]
    tasks.append(asyncio.create_task(_retain(redis, streams, stop, settings)))
    if isinstance(sink, AggregateSink):
        pruning = run_dedup_pruning(redis, streams, sink.prune, stop)
        tasks.append(asyncio.create_task(pruning, name="dedup-pruning"))
    try:
        await _until_stopped(tasks, stop, settings.shutdown_timeout, logger)
    finally:
        for worker in workers:
            logger.info(
                "%s stopped consumer=%s %s",
                role,
                worker.consumer,
                worker.stats.summary(),
            )
        await redis.aclose()
        await close_sink()


async def _retain(
    redis: Any, streams: list[str], stop: asyncio.Event, settings: Settings
) -> None:
    # Every role's group must exist before anything is trimmed: a group not
    # created yet has no say in what the others trim away.
    while not stop.is_set():
        try:
            await create_groups(redis, streams, ROLES)
            break
        except Exception as exc:
            logging.getLogger("boltlink.retention").warning(
                "could not create consumer groups, trimming waits: %s", exc
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.trim_interval)
    await run_retention(
        redis, streams, stop, settings.trim_interval, settings.stream_maxlen
    )


async def _until_stopped(
    tasks: list[asyncio.Task[None]],
    stop: asyncio.Event,
    timeout: float,
    logger: logging.Logger,
) -> None:
    """Wait for ``stop``, then give ``tasks`` ``timeout`` seconds to finish."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            _, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                # Entries of a cancelled batch stay pending; a consumer
                # reclaims them after BOLTLINK_CLAIM_IDLE_MS.
                logger.warning(
                    "%d tasks still busy %.1f s after stop, cancelled",
                    len(late),
                    timeout,
                )
    finally:
        waiter.cancel()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result


async def _server_version(redis: Any) -> str:
    try:
        info = await redis.info("server")
    except Exception as exc:
        return f"unreachable({type(exc).__name__})"
    return str(info.get("valkey_version") or info.get("redis_version", "?"))
