"""Test the click pipeline: redirect -> stream -> aggregate and ingest."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from boltlink.analytics import AnalyticsStore
from boltlink.backends import connect_clickhouse
from boltlink.clicks import MAX_TS_MS, MIN_TS_MS, Click, encode_clicks, stream_names
from boltlink.workers.consumer import StreamConsumer, dead_letter_stream
from boltlink.workers.run import run_role
from boltlink.workers.sinks import AggregateSink, IngestSink

pytestmark = pytest.mark.redis


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_pipeline_counts_every_click_in_both_sinks(
    client: Any, auth: Any, settings: Any, app: Any
) -> None:
    codes = []
    for n in range(3):
        body = {"url": f"https://example.com/{n}"}
        codes.append(
            (await client.post("/api/v1/links", json=body, headers=auth)).json()
        )
    for n, link in enumerate(codes):
        for _ in range(n + 2):
            assert (await client.get(f"/{link['code']}")).status_code == 302

    stop = asyncio.Event()
    roles = [
        asyncio.create_task(run_role(r, settings, stop))
        for r in ("aggregate", "ingest")
    ]
    store = app.state.runtime.store

    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()

    async def counted() -> bool:
        links = [await store.get_link(link["code"]) for link in codes]
        in_store = [link.clicks for link in links] == [2, 3, 4]
        return in_store and await analytics.count_clicks() == 9

    try:
        await _wait_for(counted)
    finally:
        stop.set()
        await asyncio.gather(*roles)

    response = await client.get(f"/api/v1/links/{codes[2]['code']}", headers=auth)
    assert response.json()["clicks"] == 4
    try:
        link = await store.get_link(codes[1]["code"])
        assert await analytics.count_clicks(link.id) == 3
    finally:
        analytics.close()


def _clicks(link_id: int, n: int) -> list[Click]:
    return [
        Click(link_id=link_id, code="c", ts_ms=1_700_000_000_000 + i) for i in range(n)
    ]


async def _consumer(redis: Any, settings: Any, sink: Any) -> StreamConsumer:
    consumer = StreamConsumer(
        redis,
        stream_names(settings.redis_prefix, 1),
        sink=sink,
        consumer="test-0",
        prefix=settings.redis_prefix,
        batch_size=100,
        block_ms=10,
    )
    await consumer.ensure_groups()
    return consumer


async def test_aggregate_redelivered_entry_counts_once(
    app: Any, redis_client: Any, settings: Any, client: Any, auth: Any
) -> None:
    link = (
        await client.post("/api/v1/links", json={"url": "https://e.com"}, headers=auth)
    ).json()
    store = app.state.runtime.store
    link_id = (await store.get_link(link["code"])).id
    stream = stream_names(settings.redis_prefix, 1)[0]
    await redis_client.xadd(stream, encode_clicks(_clicks(link_id, 5)))

    # The first consumer writes but "dies" before XACK: simulate it by writing
    # through the sink directly and leaving the entry pending.
    consumer = await _consumer(redis_client, settings, AggregateSink(store))
    reply = await redis_client.xreadgroup(
        "aggregate", "test-0", {stream: ">"}, count=10
    )
    entry_id = reply[0][1][0][0].decode()
    await AggregateSink(store).write(stream, [(entry_id, _clicks(link_id, 5))])

    # Restarted, the consumer reads its own pending entries first.
    assert await consumer.step() == 1
    assert (await store.get_link(link["code"])).clicks == 5
    assert await redis_client.xpending(stream, "aggregate") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_ingest_redelivered_entry_stored_once(
    redis_client: Any, settings: Any
) -> None:
    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()
    stream = stream_names(settings.redis_prefix, 1)[0]
    entries = [("1-0", _clicks(7, 3)), ("2-0", _clicks(7, 2))]
    try:
        sink = IngestSink(analytics)
        await sink.write(stream, entries)
        await sink.write(stream, entries)
        await sink.write(stream, entries[1:])

        assert await analytics.count_clicks(7) == 5
    finally:
        analytics.close()


async def test_consumer_dead_letters_undecodable_entry(
    app: Any, redis_client: Any, settings: Any, client: Any, auth: Any
) -> None:
    link = (
        await client.post("/api/v1/links", json={"url": "https://e.com"}, headers=auth)
    ).json()
    store = app.state.runtime.store
    link_id = (await store.get_link(link["code"])).id
    stream = stream_names(settings.redis_prefix, 1)[0]
    await redis_client.xadd(stream, encode_clicks(_clicks(link_id, 1)))
    bad_id = await redis_client.xadd(stream, {"v": "1", "c": "{broken"})
    await redis_client.xadd(stream, encode_clicks(_clicks(link_id, 2)))

    consumer = await _consumer(redis_client, settings, AggregateSink(store))
    consumer._backlog = False
    assert await consumer.step() == 3

    assert (await store.get_link(link["code"])).clicks == 3
    dead = await redis_client.xrange(dead_letter_stream(settings.redis_prefix))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"id"] == bad_id
    assert fields[b"group"] == b"aggregate"
    assert b"unreadable" in fields[b"error"]


def _forged_entries(link_id: int) -> list[dict[str, Any]]:
    """Return entries one sink or the other used to refuse, each decodable JSON."""
    good = {"l": link_id, "k": "c", "t": 1_700_000_000_000}
    wires: list[dict[str, Any]] = [
        {**good, "t": 253_402_300_800_000},  # year 10000
        {**good, "t": MAX_TS_MS},  # 2200-01-01, just past the range
        {**good, "t": MIN_TS_MS - 1},  # 1999
        {**good, "t": True},
        {**good, "l": 0},
        {**good, "l": -1},
        {**good, "l": 2**63},  # beyond a Postgres bigint
        {**good, "l": True},
        {**good, "k": "x" * 65},
        {**good, "ua": "u" * 1025},
        {**good, "cc": 7},
    ]
    entries = [{"v": "1", "c": orjson.dumps([good, wire])} for wire in wires]
    # A NUL in the key the aggregate sink stores as text (Postgres refuses it).
    entries.append({**encode_clicks(_clicks(link_id, 1)), b"w": b"w\x00-1"})
    return entries


async def test_forged_entries_dead_lettered_by_both_sinks(
    app: Any, redis_client: Any, settings: Any, client: Any, auth: Any
) -> None:
    link = (
        await client.post("/api/v1/links", json={"url": "https://e.com"}, headers=auth)
    ).json()
    store = app.state.runtime.store
    link_id = (await store.get_link(link["code"])).id
    stream = stream_names(settings.redis_prefix, 1)[0]
    await redis_client.xadd(stream, encode_clicks(_clicks(link_id, 1)))
    forged = [await redis_client.xadd(stream, f) for f in _forged_entries(link_id)]
    await redis_client.xadd(stream, encode_clicks(_clicks(link_id, 2)))
    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()

    try:
        for sink in (AggregateSink(store), IngestSink(analytics)):
            consumer = await _consumer(redis_client, settings, sink)
            consumer._backlog = False
            assert await consumer.step() == len(forged) + 2

        assert (await store.get_link(link["code"])).clicks == 3
        assert await analytics.count_clicks(link_id) == 3
    finally:
        analytics.close()
    dead = await redis_client.xrange(dead_letter_stream(settings.redis_prefix))
    by_group = sorted((f[b"group"], f[b"entry"]) for _, f in dead)
    assert by_group == sorted(
        (group, entry_id) for group in (b"aggregate", b"ingest") for entry_id in forged
    )
    assert all(f[b"deliveries"] == b"1" for _, f in dead)


async def test_ingest_same_entry_id_in_two_partitions_stores_both(
    redis_client: Any, settings: Any
) -> None:
    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()
    first, second = stream_names(settings.redis_prefix, 2)
    try:
        sink = IngestSink(analytics)
        # Each partition numbers its entries on its own: the same id twice.
        await sink.write(first, [("5-0", _clicks(8, 2))])
        await sink.write(second, [("5-0", _clicks(9, 2))])
        await sink.write(second, [("5-0", _clicks(9, 2))])

        rows = await analytics.query("SELECT event_id FROM clicks FINAL ORDER BY 1")
        assert rows == [("1:5-0/0",), ("1:5-0/1",), ("5-0/0",), ("5-0/1",)]
    finally:
        analytics.close()


@pytest.mark.parametrize("role", ["aggregate", "ingest"])
async def test_worker_logs_one_start_line_and_one_summary_at_stop(
    store: Any, redis_client: Any, settings: Any, caplog: Any, role: str
) -> None:
    from boltlink.models import NewLink

    link = await store.create_link(NewLink(code="logs", url="https://e.com/"))
    stream = stream_names(settings.redis_prefix, 1)[0]
    for _ in range(3):
        await redis_client.xadd(stream, encode_clicks(_clicks(link.id, 2)))
    caplog.set_level(logging.INFO, logger=f"boltlink.{role}")

    stop = asyncio.Event()
    task = asyncio.create_task(run_role(role, settings, stop, consumers=2))

    async def acked() -> bool:
        info = await redis_client.xinfo_groups(stream)
        group = next((g for g in info if g["name"] == role.encode()), None)
        return group is not None and group["entries-read"] == 3 and not group["pending"]

    await _wait_for(acked)
    stop.set()
    await task

    lines = [r.getMessage() for r in caplog.records if r.name == f"boltlink.{role}"]
    start = dict(pair.split("=", 1) for pair in lines[0].split()[2:])
    assert lines[0].startswith(f"{role} started ")
    assert (start["streams"], start["group"], start["batch_size"]) == (
        stream,
        role,
        str(settings.ingest_batch_size if role == "ingest" else settings.batch_size),
    )
    assert (settings.batch_size, settings.ingest_batch_size) == (500, 2000)
    assert len(start["consumers"].split(",")) == 2
    assert start["redis"][0].isdigit()
    backend = "clickhouse" if role == "ingest" else settings.database_dsn.split(":")[0]
    backend = backend.replace("postgresql", "postgres")
    assert start[backend][0].isdigit()

    summaries = [line for line in lines[1:] if line.startswith(f"{role} stopped ")]
    assert len(summaries) == 2 and len(lines) == 3
    totals = {"read": 0, "written": 0, "acked": 0, "dead_lettered": 0}
    for line in summaries:
        counts = dict(pair.split("=", 1) for pair in line.split()[2:])
        for name in totals:
            totals[name] += int(counts[name])
        assert {"retried", "reclaimed", "uptime_s"} <= counts.keys()
    assert totals == {"read": 3, "written": 3, "acked": 3, "dead_lettered": 0}
