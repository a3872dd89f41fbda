"""Trim the click streams behind the slowest consumer group, never past it.

An entry may go once every group is done with it: delivered to the group
and acknowledged. Per partition, the oldest id still needed is the minimum
over groups of the group's oldest pending id or, when nothing is pending,
its last-delivered id; ``XTRIM MINID ~`` then drops whole radix-tree nodes
below it (https://redis.io/docs/latest/commands/xtrim/). The approximate
form keeps at most one node (``stream-node-max-entries``, 100 by default)
of entries that could already go, and is much cheaper than exact trimming.

The redirect side keeps ``XADD ... MAXLEN ~ BOLTLINK_STREAM_MAXLEN`` only as
a hard memory cap for when a group falls that far behind; see
docs/pipeline.md for what is lost then.

The aggregate sink's memory of applied entries (``applied_click_entries``)
is trimmed here too: an applied entry is forgotten once it was applied
longer than :data:`DEDUP_KEEP` ago and before every entry the group still
holds pending was written, pending entries being the ones that can be
delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import exceptions as redis_errors

from boltlink.workers.claims import entry_key
from boltlink.workers.metrics import (
    GROUP_LAG,
    GROUP_OVERRUN,
    GROUP_PENDING,
    STREAM_CAP,
    STREAM_LENGTH,
    STREAM_TRIMMED,
)

__all__ = [
    "CONSUMER_FORGET_MS",
    "DEDUP_KEEP",
    "dedup_cutoff",
    "forget_idle_consumers",
    "oldest_needed",
    "prune_dedup_state",
    "run_dedup_pruning",
    "run_retention",
    "trim_streams",
]

#: How long the aggregate sink remembers an applied entry at least. A dead
#: letter replayed later than this may count twice if its original had been
#: written before it was given up (docs/pipeline.md, "Counted once").
DEDUP_KEEP = timedelta(days=7)
# Slack for clocks: entry ids carry Redis's clock, applied_at the store's.
_CLOCK_SLACK = timedelta(hours=1)
_PRUNE_INTERVAL = 3600.0
#: How long a consumer holding no entries may stay idle before it is forgotten.
CONSUMER_FORGET_MS = 3_600_000

#: Forget applied entries recorded before the given time; return how many.
Prune = Callable[[datetime], Awaitable[int]]

logger = logging.getLogger("boltlink.retention")

# XTRIM with ``~`` removes at most 100 nodes' worth of entries per call by
# default (its LIMIT), so a long backlog is trimmed over several calls.
_MAX_TRIM_CALLS = 1000


async def oldest_needed(redis: Any, stream: str, partition: int = 0) -> str | None:
    """Return the oldest id some group of ``stream`` still needs.

    Return ``None`` when the stream has no group, or does not exist: then no
    group has said what it needs, and nothing is trimmed.
    """
    try:
        groups = await redis.xinfo_groups(stream)
    except redis_errors.ResponseError:
        return None
    info = await redis.xinfo_stream(stream)
    needed: list[str] = []
    for group in groups:
        name = _text(group["name"])
        pending = int(group["pending"])
        lag = group.get("lag")
        _report(name, partition, lag, pending)

        delivered = _text(group["last-delivered-id"])
        oldest_pending = None
        if pending:
            summary = await redis.xpending(stream, name)
            if summary["min"] is not None:
                oldest_pending = _text(summary["min"])
        overrun = _overrun(info, group, oldest_pending)
        _report_overrun(stream, name, partition, overrun)
        needed.append(min(delivered, oldest_pending or delivered, key=entry_key))
    return min(needed, key=entry_key) if needed else None


def _overrun(stream: Any, group: Any, pending: str | None) -> bool:
    """Tell whether entries the group had not acknowledged left the stream.

    Our trimming keeps every id from the oldest one needed on, so only
    XADD's MAXLEN cap (or an XDEL) can take them: a pending entry older
    than the first one left, or more entries added and not yet read by the
    group (Redis 7's counters) than the stream still holds.
    """
    first = stream.get("first-entry")
    if not first:
        return False
    head = entry_key(_text(first[0]))
    if pending is not None and entry_key(pending) < head:
        return True
    delivered = _text(group["last-delivered-id"])
    read = group.get("entries-read")
    if entry_key(delivered) >= head or (read is None and delivered != "0-0"):
        return False
    unread = int(stream.get("entries-added") or 0) - int(read or 0)
    return unread > int(stream["length"])


def _report_overrun(stream: str, group: str, partition: int, overrun: bool) -> None:
    if overrun:
        logger.warning(
            "group %s fell behind the cap of %s: entries it had not "
            "acknowledged were dropped (raise BOLTLINK_STREAM_MAXLEN or add "
            "consumers)",
            group,
            stream,
        )
    GROUP_OVERRUN.labels(group, str(partition)).set(int(overrun))


async def trim_streams(redis: Any, streams: Sequence[str]) -> int:
    """Trim every partition up to the oldest id it still needs; return how many."""
    total = 0
    for partition, stream in enumerate(streams):
        needed = await oldest_needed(redis, stream, partition)
        if needed is not None:
            total += await _trim_to(redis, stream, partition, needed)
            await forget_idle_consumers(redis, stream)
        STREAM_LENGTH.labels(str(partition)).set(await redis.xlen(stream))
    return total


async def forget_idle_consumers(
    redis: Any, stream: str, idle_ms: int = CONSUMER_FORGET_MS
) -> int:
    """Delete the group members of ``stream`` idle that long and holding nothing.

    Every process start adds consumer names (they carry the pid), and Redis
    keeps them forever. One that holds no pending entry can go without loss;
    if it was alive after all, its next read creates it again.
    """
    forgotten = 0
    for group in await redis.xinfo_groups(stream):
        name = _text(group["name"])
        for consumer in await redis.xinfo_consumers(stream, name):
            if int(consumer["pending"]) == 0 and int(consumer["idle"]) > idle_ms:
                await redis.xgroup_delconsumer(stream, name, consumer["name"])
                forgotten += 1
    return forgotten


async def run_retention(
    redis: Any,
    streams: Sequence[str],
    stop: asyncio.Event,
    interval: float,
    cap: int | None = None,
) -> None:
    """Trim the streams every ``interval`` seconds until ``stop`` is set."""
    if cap is not None:
        STREAM_CAP.set(cap)
    while not stop.is_set():
        try:
            await trim_streams(redis, streams)
        except (redis_errors.RedisError, OSError) as exc:
            logger.warning("stream trimming skipped this round: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def dedup_cutoff(
    redis: Any, streams: Sequence[str], group: str, now: datetime
) -> datetime:
    """Return the time before which ``group``'s applied entries may be forgotten."""
    cutoff = now - DEDUP_KEEP
    for stream in streams:
        try:
            summary = await redis.xpending(stream, group)
        except redis_errors.ResponseError:
            continue  # no stream or no group yet: nothing pending
        if summary["min"] is not None:
            millis = entry_key(_text(summary["min"]))[0]
            held = datetime.fromtimestamp(millis / 1000, UTC) - _CLOCK_SLACK
            cutoff = min(cutoff, held)
    return cutoff


async def prune_dedup_state(
    redis: Any,
    streams: Sequence[str],
    prune: Prune,
    now: datetime | None = None,
) -> int:
    """Forget the aggregate group's applied entries no delivery can repeat."""
    cutoff = await dedup_cutoff(redis, streams, "aggregate", now or datetime.now(UTC))
    return await prune(cutoff)


async def run_dedup_pruning(
    redis: Any, streams: Sequence[str], prune: Prune, stop: asyncio.Event
) -> None:
    """Prune the aggregate sink's dedup state every hour until ``stop`` is set."""
    while not stop.is_set():
        try:
            pruned = await prune_dedup_state(redis, streams, prune)
            logger.debug("forgot %d applied click entries", pruned)
        except Exception as exc:
            logger.warning("applied click entries not pruned this round: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _PRUNE_INTERVAL)


async def _trim_to(redis: Any, stream: str, partition: int, minid: str) -> int:
    total = 0
    for _ in range(_MAX_TRIM_CALLS):
        trimmed = int(await redis.xtrim(stream, minid=minid, approximate=True))
        total += trimmed
        if trimmed == 0:
            break
    STREAM_TRIMMED.labels(str(partition)).inc(total)
    return total


def _report(group: str, partition: int, lag: Any, pending: int) -> None:
    # ``lag`` is Redis 7's count of entries not yet delivered to the group;
    # it is nil when Redis cannot tell (after deletions inside the range).
    labels = (group, str(partition))
    GROUP_PENDING.labels(*labels).set(pending)
    if lag is not None:
        GROUP_LAG.labels(*labels).set(int(lag))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
