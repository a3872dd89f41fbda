"""Test the consumers: reclaim, retries, dead letters, replay, retention, stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from boltlink.analytics import AnalyticsStore
from boltlink.backends import connect_clickhouse
from boltlink.clicks import Click, decode_entry, encode_clicks, stream_names
from boltlink.deadletters import (
    ORIGIN_FIELD,
    list_dead_letters,
    replay_dead_letters,
)
from boltlink.errors import BackendUnavailable
from boltlink.models import NewLink
from boltlink.workers.consumer import StreamConsumer, create_groups
from boltlink.workers.retention import (
    DEDUP_KEEP,
    forget_idle_consumers,
    prune_dedup_state,
    trim_streams,
)
from boltlink.workers.sinks import AggregateSink, IngestSink

pytestmark = pytest.mark.redis


# -- Helpers ------------------------------------------------------------------


async def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _entry(link_id: int, n: int = 1) -> dict[bytes, bytes]:
    return encode_clicks(
        [
            Click(link_id=link_id, code="c", ts_ms=1_700_000_000_000 + i)
            for i in range(n)
        ]
    )


async def _link(store: Any, code: str) -> int:
    link = await store.create_link(NewLink(code=code, url=f"https://e.com/{code}"))
    return int(link.id)


async def _clicks(store: Any, code: str) -> int:
    return int((await store.get_link(code)).clicks)


async def _add(redis: Any, stream: str, entries: Sequence[Any]) -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(stream, fields)
        return [i.decode() for i in await pipe.execute()]


def _metric(outcome: str, sink: str = "aggregate") -> float:
    value = REGISTRY.get_sample_value(
        "boltlink_consumer_entries_total", {"sink": sink, "outcome": outcome}
    )
    return value or 0.0


def _consumer(
    redis: Any, settings: Any, sink: Any, name: str = "test-0", **options: Any
) -> StreamConsumer:
    options.setdefault("batch_size", 100)
    options.setdefault("block_ms", 10)
    return StreamConsumer(
        redis,
        stream_names(settings.redis_prefix, 1),
        sink=sink,
        consumer=name,
        prefix=settings.redis_prefix,
        **options,
    )


async def _healthy() -> None:
    """Report a healthy sink, so every failure counts against its entries."""


class _RunningConsumer:
    """Run a consumer's loop in a task, to be stopped at the end of a test."""

    def __init__(self, consumer: StreamConsumer) -> None:
        self.consumer = consumer
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(consumer.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def running() -> AsyncIterator[Any]:
    """Yield a starter of consumer loops, all stopped afterwards."""
    started: list[_RunningConsumer] = []

    def start(consumer: StreamConsumer) -> _RunningConsumer:
        started.append(_RunningConsumer(consumer))
        return started[-1]

    yield start
    for run in started:
        await run.close()


class PoisonSink:
    """Fail every batch holding a click of ``bad_link`` while ``broken``."""

    def __init__(self, inner: Any, bad_link: int) -> None:
        self.name = inner.name
        self.inner = inner
        self.bad_link = bad_link
        self.broken = True

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        if self.broken and any(
            c.link_id == self.bad_link for _, clicks in entries for c in clicks
        ):
            raise ValueError(f"link {self.bad_link} breaks the sink")
        await self.inner.write(stream, entries)


class DownSink:
    """Behave like a backend down for its first ``k`` calls, pings included."""

    def __init__(self, inner: Any, k: int) -> None:
        self.name = inner.name
        self.inner = inner
        self.k = k
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if self.calls <= self.k:
            raise BackendUnavailable("link store unreachable")

    async def ping(self) -> None:
        self._call()

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        self._call()
        await self.inner.write(stream, entries)


class SlowSink:
    """Take ``seconds`` per write."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.name = inner.name
        self.inner = inner
        self.seconds = seconds
        self.started = asyncio.Event()

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        self.started.set()
        await asyncio.sleep(self.seconds)
        await self.inner.write(stream, entries)


@pytest.fixture
async def analytics(settings: Any) -> AsyncIterator[AnalyticsStore]:
    """Yield the migrated analytics store of the test's settings."""
    store = AnalyticsStore(connect_clickhouse(settings))
    store.migrate()
    try:
        yield store
    finally:
        store.close()


# -- Reclaim ------------------------------------------------------------------


async def test_reclaim_takes_over_every_entry_of_a_vanished_consumer(
    store: Any, redis_client: Any, settings: Any, running: Any
) -> None:
    link_id = await _link(store, "gone")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await create_groups(redis_client, [stream], ["aggregate"])
    await _add(redis_client, stream, [_entry(link_id) for _ in range(250)])
    # The ghost reads all 250 entries and vanishes without acknowledging any.
    reply = await redis_client.xreadgroup(
        "aggregate", "ghost", {stream: ">"}, count=250
    )
    assert len(reply[0][1]) == 250
    before = _metric("reclaimed")

    consumer = _consumer(
        redis_client,
        settings,
        AggregateSink(store),
        claim_idle_ms=100,
        claim_interval=0.05,
        batch_size=40,
    )
    run = running(consumer)

    async def counted() -> bool:
        return await _clicks(store, "gone") == 250

    await _wait_for(counted)
    await run.close()
    stats = consumer.stats
    assert (stats.reclaimed, stats.written, stats.acked) == (250, 250, 250)
    assert (stats.dead_lettered, stats.trimmed) == (0, 0)
    assert _metric("reclaimed") - before == 250
    assert (await redis_client.xpending(stream, "aggregate"))["pending"] == 0


async def test_reclaim_acks_entry_deleted_while_pending(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "del")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await create_groups(redis_client, [stream], ["aggregate"])
    ids = await _add(redis_client, stream, [_entry(link_id) for _ in range(3)])
    await redis_client.xreadgroup("aggregate", "ghost", {stream: ">"}, count=10)
    await redis_client.xdel(stream, ids[1])
    await asyncio.sleep(0.06)

    consumer = _consumer(redis_client, settings, AggregateSink(store), claim_idle_ms=50)
    await consumer.reclaim()

    assert await _clicks(store, "del") == 2
    assert (consumer.stats.trimmed, consumer.stats.written) == (1, 2)
    assert (await redis_client.xpending(stream, "aggregate"))["pending"] == 0


async def test_backlog_acks_own_entry_deleted_while_pending(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "own")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await create_groups(redis_client, [stream], ["aggregate"])
    ids = await _add(redis_client, stream, [_entry(link_id) for _ in range(2)])
    await redis_client.xreadgroup("aggregate", "test-0", {stream: ">"}, count=10)
    await redis_client.xdel(stream, ids[0])

    consumer = _consumer(redis_client, settings, AggregateSink(store))
    assert await consumer.step() == 2

    assert await _clicks(store, "own") == 1
    assert consumer.stats.trimmed == 1
    assert (await redis_client.xpending(stream, "aggregate"))["pending"] == 0


async def test_slow_write_keeps_its_entries_from_other_consumers(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "slow")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await _add(redis_client, stream, [_entry(link_id) for _ in range(5)])
    sink = SlowSink(AggregateSink(store), 0.6)
    busy = _consumer(redis_client, settings, sink, "busy", claim_idle_ms=200)
    other = _consumer(
        redis_client, settings, AggregateSink(store), "other", claim_idle_ms=200
    )
    await busy.ensure_groups()
    busy._backlog = False

    step = asyncio.create_task(busy.step())
    await sink.started.wait()
    await asyncio.sleep(0.45)
    # Idle time is reset every 100 ms, so nothing is idle for 200 ms.
    assert await other.reclaim() == 0
    assert await step == 5

    assert await _clicks(store, "slow") == 5
    assert other.stats.reclaimed == 0


# -- Retries and dead letters -----------------------------------------------------


async def test_sink_outage_is_retried_until_every_click_counts(
    store: Any, redis_client: Any, settings: Any, running: Any
) -> None:
    link_id = await _link(store, "flaky")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await _add(redis_client, stream, [_entry(link_id) for _ in range(20)])
    # Down for three writes and the three pings that follow them.
    sink = DownSink(AggregateSink(store), 6)
    consumer = _consumer(
        redis_client, settings, sink, max_deliveries=1, probe=sink.ping
    )
    run = running(consumer)

    async def counted() -> bool:
        return await _clicks(store, "flaky") == 20

    await _wait_for(counted)
    await run.close()
    assert not run.task.done() or run.task.exception() is None
    stats = consumer.stats
    assert (stats.written, stats.acked, stats.retried) == (20, 20, 60)
    assert stats.dead_lettered == 0
    assert await list_dead_letters(redis_client, settings.redis_prefix) == []


async def test_poison_entries_are_dead_lettered_and_replayed_once(
    store: Any, redis_client: Any, settings: Any, running: Any, analytics: Any
) -> None:
    good_id, bad_id = await _link(store, "good"), await _link(store, "bad")
    stream = stream_names(settings.redis_prefix, 1)[0]
    entries = (
        [_entry(good_id)] * 3
        + [
            {b"v": b"1", b"c": b"{broken"},
            {b"v": b"9", b"c": b"[]"},
            _entry(bad_id),
        ]
        + [_entry(good_id)] * 3
    )
    ids = await _add(redis_client, stream, entries)
    sink = PoisonSink(AggregateSink(store), bad_id)
    aggregate = _consumer(
        redis_client, settings, sink, max_deliveries=3, probe=_healthy
    )
    ingest = _consumer(redis_client, settings, IngestSink(analytics), "ingest-0")
    await ingest.ensure_groups()
    aggregate_run = running(aggregate)

    async def settled() -> bool:
        return aggregate.stats.dead_lettered == 3 and aggregate.stats.acked == 9

    await _wait_for(settled)
    await aggregate_run.close()
    assert await _clicks(store, "good") == 6
    assert await _clicks(store, "bad") == 0
    assert (aggregate.stats.written, aggregate.stats.retried) == (6, 3)
    letters = await list_dead_letters(redis_client, settings.redis_prefix)
    assert [(d.entry_id, d.group) for d in letters] == [
        (ids[3], "aggregate"),
        (ids[4], "aggregate"),
        (ids[5], "aggregate"),
    ]
    poison = letters[2]
    assert (poison.deliveries, poison.stream) == (4, stream)
    assert poison.error == f"ValueError: link {bad_id} breaks the sink"
    assert letters[0].deliveries == 1 and "unreadable" in letters[0].error

    # The ingest group counts the poison click normally.
    assert await ingest.step() == 0 and await ingest.step() == 9
    assert await analytics.count_clicks(bad_id) == 1

    # Cause fixed: the replay counts once in aggregate, and not again in
    # ingest, even when the replayed entry reaches the stream twice.
    sink.broken = False
    [(letter, new_id)] = await replay_dead_letters(
        redis_client, settings.redis_prefix, [poison.dead_id]
    )
    assert letter == poison
    replayed = (await redis_client.xrange(stream, new_id, new_id))[0][1]
    await redis_client.xadd(stream, replayed)
    assert replayed[ORIGIN_FIELD].decode() == ids[5]
    assert await aggregate.step() == 2
    assert await ingest.step() == 2

    assert await _clicks(store, "bad") == 1
    assert await _clicks(store, "good") == 6
    assert await analytics.count_clicks(bad_id) == 1
    assert ingest.stats.skipped == 2
    left = await list_dead_letters(redis_client, settings.redis_prefix)
    assert sorted((d.entry_id, d.group) for d in left) == [
        (ids[3], "aggregate"),
        (ids[3], "ingest"),
        (ids[4], "aggregate"),
        (ids[4], "ingest"),
    ]


# -- Graceful stop --------------------------------------------------------------


async def test_stop_finishes_and_acks_the_batch_in_hand(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "stop")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await _add(redis_client, stream, [_entry(link_id) for _ in range(10)])
    sink = SlowSink(AggregateSink(store), 0.3)
    consumer = _consumer(redis_client, settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    await sink.started.wait()
    stop.set()
    await asyncio.wait_for(task, 2)

    assert await _clicks(store, "stop") == 10
    assert consumer.stats.acked == 10
    assert (await redis_client.xpending(stream, "aggregate"))["pending"] == 0


class CountingSink:
    """Record the size of every batch written."""

    def __init__(self, inner: Any) -> None:
        self.name = inner.name
        self.inner = inner
        self.batches: list[int] = []

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        await self.inner.write(stream, entries)
        self.batches.append(len(entries))


async def test_full_batches_follow_at_once_and_a_trickle_lingers(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "linger")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await _add(redis_client, stream, [_entry(link_id) for _ in range(5)])
    sink = CountingSink(AggregateSink(store))
    consumer = _consumer(redis_client, settings, sink, batch_size=2, linger_ms=60_000)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    # Two full batches read back to back, then the partial one: the backlog
    # is drained without a pause.
    async def drained() -> bool:
        return sum(sink.batches) == 5

    await _wait_for(drained)
    assert sink.batches == [2, 2, 1]
    # After the partial batch the consumer waits for more to gather: an
    # entry added now is left in the stream, not written alone.
    await _add(redis_client, stream, [_entry(link_id)])
    await asyncio.sleep(0.5)
    assert sink.batches == [2, 2, 1]
    # The stop ends the wait at once, the entry left for the next start.
    stop.set()
    await asyncio.wait_for(task, 2)
    assert await _clicks(store, "linger") == 5
    groups = await redis_client.xinfo_groups(stream)
    assert [(g["name"], g["lag"], g["pending"]) for g in groups] == [
        (b"aggregate", 1, 0)
    ]


# -- Retention ------------------------------------------------------------------


async def test_trimming_keeps_every_entry_a_group_still_needs(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "many")
    stream = stream_names(settings.redis_prefix, 1)[0]
    ids: list[str] = []
    for _ in range(10):
        ids += await _add(redis_client, stream, [_entry(link_id)] * 10_000)

    # The laggard is done with 60,000 entries and holds the next 100 pending.
    await create_groups(redis_client, [stream], ["aggregate"])
    await redis_client.xgroup_create(
        stream, "laggard", id=ids[59_999], entries_read=60_000
    )
    held = await redis_client.xreadgroup("laggard", "slow", {stream: ">"}, count=100)
    held_ids = [i.decode() for i, _ in held[0][1]]
    assert held_ids == ids[60_000:60_100]

    consumer = _consumer(redis_client, settings, AggregateSink(store), batch_size=1000)
    assert await consumer.step() == 0  # its own pending entries: none
    while await consumer.step():
        pass
    assert await _clicks(store, "many") == 100_000
    assert consumer.stats.acked == 100_000
    await trim_streams(redis_client, [stream])

    # At most one radix-tree node (100 entries) beyond what is still needed.
    assert 40_000 <= await redis_client.xlen(stream) <= 40_000 + 100
    pending = await redis_client.xreadgroup("laggard", "slow", {stream: "0"}, count=200)
    assert [i.decode() for i, fields in pending[0][1] if fields] == held_ids
    labels = {"group": "laggard", "partition": "0"}
    sample = REGISTRY.get_sample_value
    assert sample("boltlink_stream_group_pending_entries", labels) == 100
    assert sample("boltlink_stream_group_lag_entries", labels) == 39_900
    assert sample("boltlink_stream_length_entries", {"partition": "0"}) == (
        await redis_client.xlen(stream)
    )

    # Once the laggard is done, the stream shrinks to under one node.
    await redis_client.xack(stream, "laggard", *held_ids)
    await redis_client.xgroup_setid(stream, "laggard", "$")
    await trim_streams(redis_client, [stream])
    assert await redis_client.xlen(stream) <= 100


async def test_dedup_state_is_kept_while_an_entry_is_pending_then_forgotten(
    store: Any, redis_client: Any, settings: Any
) -> None:
    link_id = await _link(store, "prune")
    stream = stream_names(settings.redis_prefix, 1)[0]
    await create_groups(redis_client, [stream], ["aggregate"])
    ids = await _add(redis_client, stream, [_entry(link_id) for _ in range(3)])
    sink = AggregateSink(store)
    await sink.write(stream, [(i, decode_entry(_entry(link_id))) for i in ids])
    # A week and a day later, one entry is still pending: delivered again,
    # it must still be recognised, and so must everything applied after it.
    later = datetime.now(UTC) + DEDUP_KEEP + timedelta(days=1)
    await redis_client.xreadgroup("aggregate", "ghost", {stream: ">"}, count=1)

    assert await prune_dedup_state(redis_client, [stream], sink.prune, later) == 0
    await sink.write(stream, [(ids[0], decode_entry(_entry(link_id)))])
    assert await _clicks(store, "prune") == 3

    await redis_client.xack(stream, "aggregate", ids[0])
    assert await prune_dedup_state(redis_client, [stream], sink.prune, later) == 3
    soon = datetime.now(UTC) + timedelta(days=1)
    assert await prune_dedup_state(redis_client, [stream], sink.prune, soon) == 0


async def test_group_behind_the_stream_cap_is_reported(
    store: Any, redis_client: Any, settings: Any
) -> None:
    stream = stream_names(settings.redis_prefix, 1)[0]
    await create_groups(redis_client, [stream], ["aggregate"])
    await _add(redis_client, stream, [_entry(1)] * 10)
    await redis_client.xreadgroup("aggregate", "ghost", {stream: ">"}, count=2)
    await create_groups(redis_client, [stream], ["ingest"])
    sample = REGISTRY.get_sample_value

    def overrun(group: str) -> float | None:
        labels = {"group": group, "partition": "0"}
        return sample("boltlink_stream_group_overrun", labels)

    await trim_streams(redis_client, [stream])
    assert (overrun("aggregate"), overrun("ingest")) == (0, 0)

    # The cap drops the oldest entries: two pending in aggregate, and some
    # ingest had not read yet.
    await redis_client.xtrim(stream, maxlen=5, approximate=False)
    await trim_streams(redis_client, [stream])
    assert (overrun("aggregate"), overrun("ingest")) == (1, 1)


async def test_idle_consumers_holding_nothing_are_forgotten(
    redis_client: Any, settings: Any
) -> None:
    stream = stream_names(settings.redis_prefix, 1)[0]
    await create_groups(redis_client, [stream], ["aggregate"])
    [entry_id] = await _add(redis_client, stream, [_entry(1)])
    await redis_client.xreadgroup("aggregate", "holder", {stream: ">"}, count=1)
    await redis_client.xgroup_createconsumer(stream, "aggregate", "idle")
    await asyncio.sleep(0.05)

    assert await forget_idle_consumers(redis_client, stream, idle_ms=10) == 1
    names = {c["name"] for c in await redis_client.xinfo_consumers(stream, "aggregate")}
    assert names == {b"holder"}
    await redis_client.xack(stream, "aggregate", entry_id)
    await asyncio.sleep(0.05)
    assert await forget_idle_consumers(redis_client, stream, idle_ms=10) == 1
    assert await forget_idle_consumers(redis_client, stream) == 0
