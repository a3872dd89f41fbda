"""Start the consumers of one role and stop them cleanly.

``run_role`` is what ``boltlink aggregate`` and ``boltlink ingest`` run, and
what ``boltlink serve`` runs as background jobs in the embedded profile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from boltlink.analytics import AnalyticsStore
from boltlink.backends import connect_clickhouse, connect_redis, open_store
from boltlink.clicks import stream_names
from boltlink.settings import Settings
from boltlink.workers.consumer import Sink, StreamConsumer
from boltlink.workers.sinks import AggregateSink, IngestSink

__all__ = ["ROLES", "run_role"]

ROLES = ("aggregate", "ingest")


def consumer_name(role: str, index: int) -> str:
    """Return a consumer name unique across hosts, processes and tasks."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{index}"


async def _open_sink(role: str, settings: Settings) -> tuple[Sink, Any]:
    if role == "aggregate":
        store = await open_store(settings)
        return AggregateSink(store), store.close
    client = await asyncio.to_thread(connect_clickhouse, settings)
    analytics = AnalyticsStore(client)
    await asyncio.to_thread(analytics.migrate)

    async def close() -> None:
        analytics.close()

    return IngestSink(analytics), close


async def run_role(
    role: str, settings: Settings, stop: asyncio.Event, consumers: int | None = None
) -> None:
    """Run ``consumers`` consumers of ``role`` until ``stop`` is set."""
    logger = logging.getLogger(f"boltlink.{role}")
    count = consumers or settings.consumers
    sink, close_sink = await _open_sink(role, settings)
    redis = connect_redis(settings, socket_timeout=settings.block_ms / 1000 + 5)
    streams = stream_names(settings.redis_prefix, settings.stream_partitions)
    workers = [
        StreamConsumer(
            redis,
            streams,
            sink=sink,
            consumer=consumer_name(role, index),
            prefix=settings.redis_prefix,
            batch_size=settings.batch_size,
            block_ms=settings.block_ms,
        )
        for index in range(count)
    ]
    info = await _server_version(redis)
    logger.info(
        "%s started streams=%s group=%s consumers=%s batch_size=%d block_ms=%d "
        "redis=%s",
        role,
        ",".join(streams),
        sink.name,
        ",".join(w.consumer for w in workers),
        settings.batch_size,
        settings.block_ms,
        info,
    )
    try:
        await asyncio.gather(*(w.run(stop) for w in workers))
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


async def _server_version(redis: Any) -> str:
    try:
        info = await redis.info("server")
    except Exception as exc:
        return f"unreachable({type(exc).__name__})"
    return str(info.get("valkey_version") or info.get("redis_version", "?"))
