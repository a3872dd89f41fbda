"""Append clicks to the click streams with a group commit.

Redirects that arrive while a write is in flight wait for the next one, and
that next write carries all of them: one pipelined round trip, one stream
entry per partition. A redirect's response is released once the entry that
holds its click is written, so an answered redirect is a recorded click.

When Redis cannot be reached the clicks go to a bounded in-memory buffer
and the redirect is answered anyway; the buffer is written, oldest first,
as soon as Redis answers again. Clicks that do not fit are counted in
``boltlink_click_buffer_dropped_total`` and logged once per interval.

A failed write may have reached Redis all the same (the reply was lost, or
redis-py retried a command Redis had applied), and ``XADD *`` would give a
second copy a new id. So every entry carries a write id of its own (field
``w``, unique per recorder and entry) that the sinks deduplicate on, and an
entry that may have been written is kept and sent again unchanged, never
repacked with other clicks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from redis import exceptions as redis_errors

from boltlink.clicks import Click, encode_clicks, partition_of

__all__ = ["ClickRecorder"]

logger = logging.getLogger("boltlink.redirect")

BUFFER_DEPTH = Gauge(
    "boltlink_click_buffer_depth",
    "Clicks held in memory while Redis is unreachable",
    multiprocess_mode="livesum",
)
BUFFER_DROPPED = Counter(
    "boltlink_click_buffer_dropped_total", "Clicks lost because the buffer was full"
)
CLICKS_RECORDED = Counter(
    "boltlink_clicks_recorded_total", "Clicks written to the click stream"
)

# Any Redis error, replies included (an OOM refusal under maxmemory, a
# failover's READONLY): the clicks wait in the buffer, never the redirect.
_REDIS_FAULTS = (redis_errors.RedisError, OSError)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One stream entry as first sent; a retry sends exactly this again."""

    partition: int
    write_id: str
    clicks: list[Click]


class ClickRecorder:
    """Batch clicks from concurrent redirects into pipelined stream writes."""

    def __init__(
        self,
        redis: Any,
        streams: list[str],
        *,
        maxlen: int,
        buffer_size: int,
        retry_interval: float = 0.5,
    ) -> None:
        self._redis = redis
        self._streams = streams
        self._maxlen = maxlen
        self._buffer_size = buffer_size
        self._retry_interval = retry_interval
        self._pending: list[tuple[Click, asyncio.Future[None]]] = []
        # The buffer: entries that may have been written, oldest first, then
        # clicks never sent yet, which may still be packed as we like.
        self._unsure: collections.deque[_Entry] = collections.deque()
        self._unsure_clicks = 0
        self._unsent: collections.deque[Click] = collections.deque()
        self._closing = False
        self._writer = secrets.token_hex(6)
        self._writes = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped_since_log = 0
        self._last_drop_log = 0.0

    async def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name="click-recorder")

    async def record(self, click: Click) -> None:
        """Queue a click and return once it is written (or buffered)."""
        if self.buffered:
            # Redis is known to be down: queue behind the buffered clicks
            # at once rather than wait for the next failed attempt.
            self._keep_unsent([click])
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((click, future))
        self._wakeup.set()
        await future

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending, retrying the buffer until ``timeout``."""
        if self._task is None:
            return
        deadline = time.monotonic() + timeout
        while (self._pending or self.buffered) and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        # The flag ends the writer even if the cancellation is lost on the
        # way (redis-py may turn one mid-command into a ConnectionError).
        self._closing = True
        self._wakeup.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.buffered:
            logger.warning(
                "click recorder stopped with %d buffered clicks unwritten",
                self.buffered,
            )

    @property
    def buffered(self) -> int:
        """Return how many clicks wait in the outage buffer."""
        return self._unsure_clicks + len(self._unsent)

    async def _run(self) -> None:
        while not self._closing:
            if self.buffered:
                await self._drain_buffer()
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write_batch(batch)

    async def _write_batch(
        self, batch: list[tuple[Click, asyncio.Future[None]]]
    ) -> None:
        clicks = [click for click, _ in batch]
        # Keep order: while older clicks wait in the buffer, newer ones queue
        # behind them rather than overtake.
        if self.buffered:
            self._keep_unsent(clicks)
        else:
            entries = self._pack(clicks)
            try:
                await self._append(entries)
            except _REDIS_FAULTS as exc:
                logger.warning("click stream unavailable, buffering clicks: %s", exc)
                self._keep_unsure(entries)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _pack(self, clicks: list[Click]) -> list[_Entry]:
        """Return one entry per partition for ``clicks``, each with a new write id."""
        by_partition: dict[int, list[Click]] = collections.defaultdict(list)
        for click in clicks:
            by_partition[partition_of(click.link_id, len(self._streams))].append(click)
        return [
            _Entry(partition, f"{self._writer}-{next(self._writes)}", part)
            for partition, part in by_partition.items()
        ]

    async def _append(self, entries: list[_Entry]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(
                    self._streams[entry.partition],
                    encode_clicks(entry.clicks, write_id=entry.write_id),
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()
        CLICKS_RECORDED.inc(sum(len(entry.clicks) for entry in entries))

    def _keep_unsure(self, entries: list[_Entry]) -> None:
        dropped = 0
        for entry in entries:
            room = self._buffer_size - self.buffered
            if room <= 0:
                dropped += len(entry.clicks)
                continue
            if room < len(entry.clicks):
                # Fewer clicks under the same write id: if the whole entry
                # did reach Redis, this part is dropped as a copy of it.
                dropped += len(entry.clicks) - room
                entry = _Entry(entry.partition, entry.write_id, entry.clicks[:room])
            self._unsure.append(entry)
            self._unsure_clicks += len(entry.clicks)
        self._count_drops(dropped)

    def _keep_unsent(self, clicks: list[Click]) -> None:
        room = max(self._buffer_size - self.buffered, 0)
        self._unsent.extend(clicks[:room])
        self._count_drops(len(clicks) - min(room, len(clicks)))

    def _count_drops(self, dropped: int) -> None:
        if dropped > 0:
            BUFFER_DROPPED.inc(dropped)
            self._dropped_since_log += dropped
            self._log_drops()
        BUFFER_DEPTH.set(self.buffered)

    def _log_drops(self, interval: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= interval:
            logger.error(
                "click buffer full (%d clicks), dropped %d clicks",
                self._buffer_size,
                self._dropped_since_log,
            )
            self._dropped_since_log = 0
            self._last_drop_log = now

    async def _drain_buffer(self, chunk: int = 1000) -> None:
        # Write the oldest entries first, about a chunk of clicks at a time;
        # on failure wait and try again, new clicks queueing behind.
        while self.buffered and not self._closing:
            if not self._unsure:
                self._pack_unsent(chunk)
            entries = self._oldest_unsure(chunk)
            try:
                await self._append(entries)
            except _REDIS_FAULTS:
                await asyncio.sleep(self._retry_interval)
                batch, self._pending = self._pending, []
                if batch:
                    await self._write_batch(batch)
                continue
            for entry in entries:
                self._unsure.popleft()
                self._unsure_clicks -= len(entry.clicks)
            BUFFER_DEPTH.set(self.buffered)
        if not self.buffered:
            logger.info("click stream reachable again, buffer written")

    def _pack_unsent(self, chunk: int) -> None:
        # From here on these clicks may reach Redis: they stay in these
        # entries until one write of them is known to have succeeded.
        clicks = [self._unsent.popleft() for _ in range(min(chunk, len(self._unsent)))]
        for entry in self._pack(clicks):
            self._unsure.append(entry)
            self._unsure_clicks += len(entry.clicks)

    def _oldest_unsure(self, chunk: int) -> list[_Entry]:
        entries: list[_Entry] = []
        clicks = 0
        for entry in self._unsure:
            if entries and clicks + len(entry.clicks) > chunk:
                break
            entries.append(entry)
            clicks += len(entry.clicks)
        return entries
