"""Append clicks to the click streams with a group commit.

Redirects that arrive while a write is in flight wait for the next one, and
that next write carries all of them: one pipelined round trip, one stream
entry per partition. A redirect's response is released once the entry that
holds its click is written, so an answered redirect is a recorded click.

When Redis cannot be reached the clicks go to a bounded in-memory buffer
and the redirect is answered anyway; the buffer is written, oldest first,
as soon as Redis answers again. Clicks that do not fit are counted in
``boltlink_click_buffer_dropped_total`` and logged once per interval.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
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

_REDIS_FAULTS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


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
        self._buffer: collections.deque[Click] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped_since_log = 0
        self._last_drop_log = 0.0

    async def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name="click-recorder")

    async def record(self, click: Click) -> None:
        """Queue a click and return once it is written (or buffered)."""
        if self._buffer:
            # Redis is known to be down: queue behind the buffered clicks
            # at once rather than wait for the next failed attempt.
            self._keep([click])
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
        while (self._pending or self._buffer) and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._buffer:
            logger.warning(
                "click recorder stopped with %d buffered clicks unwritten",
                len(self._buffer),
            )

    @property
    def buffered(self) -> int:
        """Return how many clicks wait in the outage buffer."""
        return len(self._buffer)

    async def _run(self) -> None:
        while True:
            if self._buffer:
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
        if self._buffer:
            self._keep(clicks)
        else:
            try:
                await self._append(clicks)
            except _REDIS_FAULTS as exc:
                logger.warning("click stream unavailable, buffering clicks: %s", exc)
                self._keep(clicks)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _append(self, clicks: list[Click]) -> None:
        by_partition: dict[int, list[Click]] = collections.defaultdict(list)
        for click in clicks:
            by_partition[partition_of(click.link_id, len(self._streams))].append(click)

        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, part in by_partition.items():
                pipe.xadd(
                    self._streams[partition],
                    encode_clicks(part),
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()
        CLICKS_RECORDED.inc(len(clicks))

    def _keep(self, clicks: list[Click]) -> None:
        room = self._buffer_size - len(self._buffer)
        self._buffer.extend(clicks[:room])
        dropped = len(clicks) - max(room, 0)
        if dropped > 0:
            BUFFER_DROPPED.inc(dropped)
            self._dropped_since_log += dropped
            self._log_drops()
        BUFFER_DEPTH.set(len(self._buffer))

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
        # Write the oldest clicks first, a chunk at a time; on failure wait
        # and try again, new clicks queueing behind in the buffer.
        while self._buffer:
            clicks = [self._buffer[i] for i in range(min(chunk, len(self._buffer)))]
            try:
                await self._append(clicks)
            except _REDIS_FAULTS:
                await asyncio.sleep(self._retry_interval)
                batch, self._pending = self._pending, []
                if batch:
                    await self._write_batch(batch)
                continue
            for _ in clicks:
                self._buffer.popleft()
            BUFFER_DEPTH.set(len(self._buffer))
        logger.info("click stream reachable again, buffer written")
