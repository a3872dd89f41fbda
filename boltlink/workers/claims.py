"""Take over the entries of vanished consumers and keep those of busy ones.

Redis tracks, per group, which consumer holds each delivered entry and for
how long it has been idle (the pending entries list). ``XAUTOCLAIM`` moves
entries idle longer than a threshold to the caller, so a consumer that died
holding entries loses them to a live one; ``XCLAIM ... JUSTID`` resets the
idle time of entries a consumer still works on, so nobody takes them over
while a slow write is in flight. See https://redis.io/docs/latest/commands/xautoclaim/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis import exceptions as redis_errors

__all__ = ["autoclaim_pages", "delivery_counts", "entry_key", "keep_claimed"]

logger = logging.getLogger("boltlink.consumer")

_REDIS_FAULTS = (redis_errors.RedisError, OSError)


def entry_key(entry_id: str) -> tuple[int, int]:
    """Return a stream entry id as numbers, for ordering ids correctly."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


async def autoclaim_pages(
    redis: Any, stream: str, group: str, consumer: str, *, idle_ms: int, count: int
) -> AsyncIterator[tuple[list[Any], list[str]]]:
    """Claim every entry idle over ``idle_ms``, one page at a time.

    Yield each page's claimed entries and the ids of entries that were
    deleted or trimmed from the stream while pending (the third element of
    the Redis 7 reply); follow the cursor until it comes back as ``0-0``.
    """
    cursor = "0-0"
    while True:
        reply = await redis.xautoclaim(
            stream, group, consumer, idle_ms, cursor, count=count
        )
        cursor = _text(reply[0])
        deleted = [_text(i) for i in reply[2]] if len(reply) > 2 else []
        yield list(reply[1]), deleted
        if cursor == "0-0":
            return


async def delivery_counts(
    redis: Any, stream: str, group: str, consumer: str, ids: Sequence[str]
) -> dict[str, int]:
    """Return how many times each of ``ids`` was delivered, from XPENDING."""
    if not ids:
        return {}
    ordered = sorted(ids, key=entry_key)
    low, high = ordered[0], ordered[-1]
    page = max(len(ids), 100)
    counts: dict[str, int] = {}
    while True:
        # Our pending list may hold other entries inside the range, so page
        # through it with an exclusive lower bound (Redis 6.2+).
        rows = await redis.xpending_range(
            stream, group, min=low, max=high, count=page, consumername=consumer
        )
        for row in rows:
            counts[_text(row["message_id"])] = int(row["times_delivered"])
        if len(rows) < page:
            return counts
        low = "(" + _text(rows[-1]["message_id"])


@contextlib.asynccontextmanager
async def keep_claimed(
    redis: Any,
    stream: str,
    group: str,
    consumer: str,
    ids: Sequence[str],
    *,
    idle_ms: int,
) -> AsyncIterator[None]:
    """Reset the idle time of ``ids`` every half ``idle_ms`` while inside."""
    done = asyncio.Event()
    task = asyncio.create_task(
        _touch_until(done, redis, stream, group, consumer, list(ids), idle_ms),
        name=f"keep-claimed-{consumer}",
    )
    try:
        yield
    finally:
        # The event ends the loop even if a cancellation is lost on the way:
        # redis-py may turn one that lands mid-command into a ConnectionError.
        done.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _touch_until(
    done: asyncio.Event,
    redis: Any,
    stream: str,
    group: str,
    consumer: str,
    ids: list[str],
    idle_ms: int,
) -> None:
    if not ids:
        return
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), idle_ms / 2000)
        if done.is_set():
            return
        # Claim only entries idle over a quarter of the threshold: ours have
        # been idle about half of it, while one another consumer has just
        # taken over (our touch came late) has not, and stays with it.
        try:
            await redis.xclaim(stream, group, consumer, idle_ms // 4, ids, justid=True)
        except _REDIS_FAULTS as exc:
            logger.debug("could not keep %d entries of %s: %s", len(ids), stream, exc)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
