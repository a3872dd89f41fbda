"""Read the click streams as one consumer of a group and feed a sink.

The loop is the same for every sink: read a batch with ``XREADGROUP``, hand
it to the sink in one call, and ``XACK`` only after the sink returned, so an
entry is acknowledged only once its effect is durable. Sinks are idempotent
on the entry's key (its write id, see :mod:`boltlink.clicks`), so a second
delivery of an entry, or a second copy of it, is harmless. Around that:

- on start, and after any failure, a consumer re-reads its own pending
  entries (id ``0``) before asking for new ones;
- every ``claim_interval`` seconds it takes over, with ``XAUTOCLAIM``, the
  entries other consumers left idle for ``claim_idle_ms``;
- a failed batch write is bisected, so the valid entries are written and
  only the ones that fail alone stay pending; when the sink's health probe
  fails too, the whole batch is held and retried with backoff instead;
- an entry delivered more than ``max_deliveries`` times, or one that cannot
  be decoded, goes to the dead-letter stream and is acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import exceptions as redis_errors

from boltlink import tracing
from boltlink.clicks import Click, MalformedEntry, decode_entry
from boltlink.deadletters import (
    ONLY_FIELD,
    dead_letter_stream,
    dedup_key,
    record_dead_letter,
)
from boltlink.errors import BackendUnavailable
from boltlink.workers.claims import autoclaim_pages, delivery_counts, keep_claimed
from boltlink.workers.metrics import BATCH_ENTRIES, BATCH_SECONDS, ENTRIES

__all__ = [
    "Backoff",
    "ConsumerStats",
    "Sink",
    "StreamConsumer",
    "create_groups",
    "dead_letter_stream",
]

#: The sink's health check: returns when the sink can take writes.
Probe = Callable[[], Awaitable[None]]

_MAX_REMEMBERED_ERRORS = 10_000


class Sink(Protocol):
    """Write decoded stream entries durably and idempotently."""

    name: str

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        """Make the entries' effect durable; a repeat must change nothing."""


@dataclass
class ConsumerStats:
    """Count what one consumer did, for its shutdown summary."""

    read: int = 0
    written: int = 0
    acked: int = 0
    retried: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        """Return the counters as ``key=value`` pairs."""
        return (
            f"read={self.read} written={self.written} acked={self.acked} "
            f"retried={self.retried} reclaimed={self.reclaimed} "
            f"dead_lettered={self.dead_lettered} trimmed={self.trimmed} "
            f"skipped={self.skipped} "
            f"uptime_s={time.monotonic() - self.started:.1f}"
        )


class Backoff:
    """Produce exponentially growing delays with jitter, up to a cap."""

    def __init__(self, first: float = 0.1, cap: float = 30.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def delay(self) -> float:
        """Return the next delay and double the one after it."""
        delay = min(self._next * random.uniform(0.5, 1.5), self._cap)
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        """Start again from the first delay."""
        self._next = self._first


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One decoded entry: its stream id, and the key sinks deduplicate on."""

    entry_id: str
    key: str
    clicks: list[Click]


async def create_groups(
    redis: Any, streams: Sequence[str], groups: Sequence[str]
) -> None:
    """Create each group on every partition at id 0, streams included."""
    for stream in streams:
        for group in groups:
            try:
                await redis.xgroup_create(stream, group, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


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
        linger_ms: int = 0,
        claim_idle_ms: int = 30_000,
        claim_interval: float = 5.0,
        max_deliveries: int = 5,
        probe: Probe | None = None,
    ) -> None:
        self._redis = redis
        self._streams = streams
        self._sink = sink
        self.group = sink.name
        self.consumer = consumer
        self._prefix = prefix
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._linger = linger_ms / 1000
        self._claim_idle_ms = claim_idle_ms
        self._claim_interval = claim_interval
        self._max_deliveries = max_deliveries
        self._probe = probe
        self._logger = logging.getLogger(f"boltlink.{sink.name}")
        self.stats = ConsumerStats()
        # Start from our own pending entries: a previous life may have died
        # before acknowledging them.
        self._backlog = True
        self._next_claim = 0.0
        self._failing = False
        self._errors: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._stop: asyncio.Event | None = None

    async def ensure_groups(self) -> None:
        """Create the group on every partition at id 0, streams included."""
        await create_groups(self._redis, self._streams, [self.group])

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, finishing the batch in hand."""
        self._stop = stop
        pause, retry = Backoff(), Backoff()
        while not stop.is_set():
            try:
                await self.ensure_groups()
                while not stop.is_set():
                    await self._turn(stop, retry)
                    pause.reset()
            except Exception as exc:
                delay = pause.delay()
                self._logger.warning(
                    "%s consumer %s paused %.1f s: %s",
                    self.group,
                    self.consumer,
                    delay,
                    exc,
                )
                self._backlog = True
                await _sleep_or_stop(stop, delay)

    async def _turn(self, stop: asyncio.Event, retry: Backoff) -> None:
        self._failing = False
        if time.monotonic() >= self._next_claim:
            await self.reclaim()
        read = await self.step()
        # Entries that failed alone wait in our pending list; give whatever
        # made them fail time to pass before their next delivery.
        if self._failing:
            await _sleep_or_stop(stop, retry.delay())
            return
        retry.reset()
        if 0 < read < self._batch_size and self._linger:
            # Caught up: let the next batch gather rather than write a few
            # entries at a time (each batch costs a transaction or an insert
            # whatever its size). Clicks wait in the stream, not in memory.
            await _sleep_or_stop(stop, self._linger)

    async def step(self) -> int:
        """Read, write and acknowledge one batch; return how many entries."""
        backlog = self._backlog
        reply = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {stream: "0" if backlog else ">" for stream in self._streams},
            count=self._batch_size,
            block=None if backlog else self._block_ms,
        )
        total = 0
        for raw_stream, entries in reply or []:
            stream = _text(raw_stream)
            counts = await self._counts(stream, entries) if backlog else {}
            total += await self._process(stream, entries, counts)
        if backlog and total == 0:
            self._backlog = False
        return total

    async def reclaim(self) -> int:
        """Take over entries idle past the claim time; return how many."""
        self._next_claim = time.monotonic() + self._claim_interval
        total = 0
        for stream in self._streams:
            pages = autoclaim_pages(
                self._redis,
                stream,
                self.group,
                self.consumer,
                idle_ms=self._claim_idle_ms,
                count=self._batch_size,
            )
            async for entries, deleted in pages:
                await self._drop_deleted(stream, deleted)
                if entries:
                    self._count("reclaimed", len(entries))
                    counts = await self._counts(stream, entries)
                    total += await self._process(stream, entries, counts)
        return total

    async def _counts(self, stream: str, entries: list[Any]) -> dict[str, int]:
        ids = [_text(raw_id) for raw_id, _ in entries]
        return await delivery_counts(
            self._redis, stream, self.group, self.consumer, ids
        )

    async def _drop_deleted(self, stream: str, ids: list[str]) -> None:
        # Deleted or trimmed while pending: nothing left to apply, ever.
        if ids:
            self._count("trimmed", len(ids))
            self._logger.warning(
                "%d pending entries of %s were gone from the stream", len(ids), stream
            )
            await self._ack(stream, ids)

    async def _process(
        self, stream: str, entries: list[Any], counts: Mapping[str, int]
    ) -> int:
        started = time.perf_counter()
        self._count("read", len(entries))
        done: list[str] = []
        good: list[_Delivery] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            delivery = await self._triage(
                stream, entry_id, fields or {}, counts.get(entry_id, 1)
            )
            if delivery is None:
                done.append(entry_id)
            else:
                good.append(delivery)

        # Traced, the batch continues the trace of the redirects it carries.
        with tracing.batch_span(self.group, stream, (d.clicks for d in good)):
            written = await self._write_held(stream, good)
            await self._ack(stream, done + [d.entry_id for d in written])
        BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
        return len(entries)

    async def _triage(
        self, stream: str, entry_id: str, fields: Mapping[bytes, bytes], deliveries: int
    ) -> _Delivery | None:
        """Return the entry to write, or None once it is settled otherwise."""
        if not fields:
            # Deleted or trimmed while pending (a history read shows it empty).
            self._count("trimmed", 1)
            return None
        only = fields.get(ONLY_FIELD)
        if only is not None and _text(only) != self.group:
            # A replay for another group: we may have counted the original.
            self._count("skipped", 1)
            return None

        key = dedup_key(entry_id, fields)
        if deliveries > self._max_deliveries:
            error = self._errors.pop(key, None) or "never acknowledged"
            await self._dead_letter(stream, entry_id, fields, error, deliveries)
            return None
        try:
            return _Delivery(entry_id, key, decode_entry(fields))
        except MalformedEntry as exc:
            await self._dead_letter(stream, entry_id, fields, str(exc), deliveries)
            return None

    async def _write_held(self, stream: str, batch: list[_Delivery]) -> list[_Delivery]:
        """Write ``batch``, holding it through sink outages; return what was written."""
        if not batch:
            return []
        BATCH_ENTRIES.labels(self.group).observe(len(batch))
        backoff = Backoff()
        ids = [d.entry_id for d in batch]
        claim = keep_claimed(
            self._redis,
            stream,
            self.group,
            self.consumer,
            ids,
            idle_ms=self._claim_idle_ms,
        )
        async with claim:
            while True:
                try:
                    written, failed = await self._write_isolating(stream, batch)
                except BackendUnavailable as exc:
                    if self._stop is not None and self._stop.is_set():
                        raise
                    await self._wait_for_sink(len(batch), backoff.delay(), exc)
                    continue
                self._remember_failures(stream, failed)
                return written

    async def _wait_for_sink(self, size: int, delay: float, exc: Exception) -> None:
        self._count("retried", size)
        self._logger.warning(
            "%s sink unavailable, retrying %d entries in %.1f s: %s",
            self.group,
            size,
            delay,
            exc,
        )
        if self._stop is None:
            await asyncio.sleep(delay)
        else:
            await _sleep_or_stop(self._stop, delay)

    async def _write_isolating(
        self, stream: str, batch: list[_Delivery]
    ) -> tuple[list[_Delivery], list[tuple[_Delivery, Exception]]]:
        """Write ``batch``; on failure bisect it to find the entries at fault."""
        try:
            await self._sink.write(stream, [(d.key, d.clicks) for d in batch])
        except Exception as exc:
            await self._check_sink(exc)
            if len(batch) == 1:
                return [], [(batch[0], exc)]
            middle = len(batch) // 2
            left = await self._write_isolating(stream, batch[:middle])
            right = await self._write_isolating(stream, batch[middle:])
            return left[0] + right[0], left[1] + right[1]
        self._count("written", len(batch))
        return batch, []

    async def _check_sink(self, exc: Exception) -> None:
        # A write can fail because of its entries or because the sink is
        # down; only the first may count against the entries.
        if self._probe is None:
            return
        try:
            await self._probe()
        except Exception:
            raise BackendUnavailable(f"{self.group} sink failed: {exc}") from exc

    def _remember_failures(
        self, stream: str, failed: list[tuple[_Delivery, Exception]]
    ) -> None:
        if not failed:
            return
        for delivery, exc in failed:
            self._errors[delivery.key] = f"{type(exc).__name__}: {exc}"
            self._errors.move_to_end(delivery.key)
        while len(self._errors) > _MAX_REMEMBERED_ERRORS:
            self._errors.popitem(last=False)
        self._count("retried", len(failed))
        self._logger.warning(
            "%d entries of %s failed alone in %s and stay pending: %s",
            len(failed),
            stream,
            self.group,
            self._errors[failed[-1][0].key],
        )
        self._failing = True
        self._backlog = True

    async def _ack(self, stream: str, ids: list[str]) -> None:
        if ids:
            await self._redis.xack(stream, self.group, *ids)
            self._count("acked", len(ids))

    async def _dead_letter(
        self,
        stream: str,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        error: str,
        deliveries: int,
    ) -> None:
        await record_dead_letter(
            self._redis,
            self._prefix,
            stream=stream,
            entry_id=entry_id,
            group=self.group,
            fields=fields,
            error=error,
            deliveries=deliveries,
        )
        self._count("dead_lettered", 1)
        self._logger.warning(
            "entry %s of %s dead-lettered after %d deliveries: %s",
            entry_id,
            stream,
            deliveries,
            error,
        )

    def _count(self, outcome: str, n: int) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + n)
        ENTRIES.labels(self.group, outcome).inc(n)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
