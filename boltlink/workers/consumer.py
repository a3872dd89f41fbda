"""Read the click streams as one consumer of a group and feed a sink.

The loop is the same for every sink: read a batch with ``XREADGROUP``, hand
it to the sink in one call, and ``XACK`` only after the sink returned, so an
entry is acknowledged only once its effect is durable. A consumer that dies
between the two leaves its entries pending; on start a consumer first
re-reads its own pending entries (id ``0``) before asking for new ones.
Sinks are idempotent on the entry id, so that second delivery is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Histogram
from redis import exceptions as redis_errors

from boltlink.clicks import Click, MalformedEntry, decode_entry

__all__ = ["ConsumerStats", "Sink", "StreamConsumer", "dead_letter_stream"]

ENTRIES = Counter(
    "boltlink_consumer_entries_total",
    "Stream entries by sink and outcome",
    ["sink", "outcome"],
)
BATCH_SECONDS = Histogram(
    "boltlink_consumer_batch_seconds",
    "Time to write and acknowledge one batch",
    ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

_REDIS_FAULTS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


class Sink(Protocol):
    """Write decoded stream entries durably and idempotently."""

    name: str

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        """Make the entries' effect durable; a repeat must change nothing."""


def dead_letter_stream(prefix: str) -> str:
    """Return the name of the dead-letter stream."""
    return f"{prefix}clicks:dead"


@dataclass
class ConsumerStats:
    """Count what one consumer did, for its shutdown summary."""

    read: int = 0
    written: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        """Return the counters as ``key=value`` pairs."""
        return (
            f"read={self.read} written={self.written} acked={self.acked} "
            f"retried={self.retried} dead_lettered={self.dead_lettered} "
            f"uptime_s={time.monotonic() - self.started:.1f}"
        )


class StreamConsumer:
    """One named consumer of a group, reading every click stream partition."""

    def __init__(
        self,
        redis: Any,
        streams: list[str],
        *,
        sink: Sink,
        consumer: str,
        prefix: str,
        batch_size: int,
        block_ms: int,
    ) -> None:
        self._redis = redis
        self._streams = streams
        self._sink = sink
        self.group = sink.name
        self.consumer = consumer
        self._dead = dead_letter_stream(prefix)
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._logger = logging.getLogger(f"boltlink.{sink.name}")
        self.stats = ConsumerStats()
        # Start from our own pending entries: a previous life may have died
        # before acknowledging them.
        self._backlog = True

    async def ensure_groups(self) -> None:
        """Create the group on every partition at id 0, streams included."""
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(
                    stream, self.group, id="0", mkstream=True
                )
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, finishing the batch in hand."""
        delay = 0.1
        while not stop.is_set():
            try:
                await self.ensure_groups()
                while not stop.is_set():
                    await self.step()
                    delay = 0.1
            except Exception as exc:
                self.stats.retried += 1
                ENTRIES.labels(self.group, "retried").inc(0)
                self._logger.warning(
                    "%s consumer %s paused %.1f s: %s",
                    self.group,
                    self.consumer,
                    delay,
                    exc,
                )
                self._backlog = True
                await _sleep_or_stop(stop, delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 30.0)

    async def step(self) -> int:
        """Read, write and acknowledge one batch; return how many entries."""
        start_id = "0" if self._backlog else ">"
        reply = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {stream: start_id for stream in self._streams},
            count=self._batch_size,
            block=None if self._backlog else self._block_ms,
        )
        total = 0
        for stream, entries in reply or []:
            total += await self._handle(_text(stream), entries)
        if self._backlog and total == 0:
            self._backlog = False
        return total

    async def _handle(self, stream: str, entries: list[Any]) -> int:
        started = time.perf_counter()
        good: list[tuple[str, list[Click]]] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            try:
                good.append((entry_id, decode_entry(fields or {})))
            except MalformedEntry as exc:
                await self._dead_letter(stream, entry_id, fields, str(exc))
        self.stats.read += len(entries)
        ENTRIES.labels(self.group, "read").inc(len(entries))

        if good:
            await self._sink.write(stream, good)
            self.stats.written += len(good)
            ENTRIES.labels(self.group, "written").inc(len(good))
        ids = [_text(raw_id) for raw_id, _ in entries]
        if ids:
            await self._redis.xack(stream, self.group, *ids)
            self.stats.acked += len(ids)
            ENTRIES.labels(self.group, "acked").inc(len(ids))
        BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
        return len(entries)

    async def _dead_letter(
        self, stream: str, entry_id: str, fields: Any, error: str
    ) -> None:
        payload = {_text(k): _text(v) for k, v in (fields or {}).items()}
        await self._redis.xadd(
            self._dead,
            {
                "stream": stream,
                "id": entry_id,
                "group": self.group,
                "error": error,
                "payload": orjson.dumps(payload),
            },
        )
        self.stats.dead_lettered += 1
        ENTRIES.labels(self.group, "dead_lettered").inc()
        self._logger.warning(
            "entry %s of %s dead-lettered: %s", entry_id, stream, error
        )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
