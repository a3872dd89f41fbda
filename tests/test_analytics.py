"""Test the analytics schema, its cluster DDL and exact rollups on chDB."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boltlink import analytics
from boltlink.analytics import AnalyticsStore, Schema
from boltlink.clicks import Click
from boltlink.settings import Settings
from boltlink.workers.sinks import IngestSink


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AnalyticsStore]:
    """Yield the shared, migrated store of a fresh chDB folder."""
    settings = Settings.from_env(
        {}, data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path / 'chdb'}"
    )
    shared = analytics.acquire(settings)
    try:
        yield shared
    finally:
        analytics.release(shared)


def test_cluster_ddl_renders_replicated_and_distributed_tables() -> None:
    ddl = "\n".join(Schema(cluster="prod", ttl_days=90).statements())

    assert "CREATE TABLE IF NOT EXISTS clicks_local ON CLUSTER `prod`" in ddl
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/"
        "clicks_local', '{replica}')" in ddl
    )
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/" in ddl
    assert (
        "CREATE TABLE IF NOT EXISTS clicks ON CLUSTER `prod` AS clicks_local "
        "ENGINE = Distributed('prod', currentDatabase(), clicks_local, "
        "cityHash64(link_id))" in ddl
    )
    for rollup in ("clicks_hourly", "clicks_daily", "clicks_dims_hourly"):
        assert f"CREATE TABLE IF NOT EXISTS {rollup} ON CLUSTER `prod` AS" in ddl
        assert f"{rollup}_local_mv ON CLUSTER `prod` TO {rollup}_local AS" in ddl
    assert (
        "ALTER TABLE clicks_dims_hourly_local ON CLUSTER `prod` "
        "ADD PROJECTION IF NOT EXISTS dims_by_day" in ddl
    )
    assert "FROM clicks_local" in ddl
    assert "ALTER TABLE clicks_local ON CLUSTER `prod` MODIFY TTL" in ddl
    assert "INTERVAL 90 DAY" in ddl


def test_single_node_ddl_has_no_cluster_terms() -> None:
    ddl = "\n".join(Schema().statements())

    assert "Replicated" not in ddl
    assert "Distributed" not in ddl
    assert "ON CLUSTER" not in ddl
    assert "ENGINE = ReplacingMergeTree" in ddl
    assert "PARTITION BY toYYYYMM(ts)" in ddl
    assert "TTL" not in ddl


def test_migrate_twice_and_ttl_follows_setting(store: AnalyticsStore) -> None:
    client = store._client
    AnalyticsStore(client, Schema(ttl_days=30)).migrate()
    assert "toIntervalDay(30)" in client.command("SHOW CREATE TABLE clicks")

    AnalyticsStore(client, Schema()).migrate()
    assert "TTL" not in client.command("SHOW CREATE TABLE clicks")


def test_migrate_upgrades_a_table_of_the_first_release(tmp_path: Path) -> None:
    from boltlink.backends import connect_clickhouse

    settings = Settings.from_env({}, clickhouse_url=f"chdb://{tmp_path / 'old'}")
    client = connect_clickhouse(settings)
    try:
        client.command(
            "CREATE TABLE clicks (event_id String, link_id UInt64, code String, "
            "ts DateTime64(3, 'UTC'), ip String, user_agent String, "
            "referrer String, accept_language LowCardinality(String), "
            "country LowCardinality(String)) ENGINE = ReplacingMergeTree "
            "PARTITION BY toYYYYMM(ts) ORDER BY (link_id, ts, event_id)"
        )
        AnalyticsStore(client).migrate()
        columns = client.query("SELECT name FROM system.columns WHERE table = 'clicks'")
        assert {"visitor", "browser", "bot"} <= {r[0] for r in columns.result_rows}
    finally:
        client.close()


def _explain_reads(store: AnalyticsStore, sql: str) -> list[str]:
    rows = store._client.query(f"EXPLAIN {sql}").result_rows
    return [row[0].strip() for row in rows if "ReadFromMergeTree" in row[0]]


async def test_dimension_questions_over_days_read_the_projection(
    store: AnalyticsStore,
) -> None:
    await IngestSink(store).write("s", _entries(14, [0, 1]))
    sql = (
        "SELECT value, bot, sum(clicks) FROM clicks_dims_hourly WHERE dim = 'os' "
        "AND toDate(hour) >= '2025-03-01' AND toDate(hour) < '2025-04-01' "
        "GROUP BY value, bot"
    )

    assert _explain_reads(store, sql) == ["└──ReadFromMergeTree (dims_by_day)"]


async def test_migrate_builds_the_projection_for_existing_parts(
    store: AnalyticsStore,
) -> None:
    client = store._client
    client.command("ALTER TABLE clicks_dims_hourly DROP PROJECTION dims_by_day")
    await IngestSink(store).write("s", _entries(13, [0, 1, 2]))

    store.migrate()
    store.migrate()
    _wait_for_mutations(client)
    parts = client.query(
        "SELECT count() FROM system.projection_parts WHERE active "
        "AND table = 'clicks_dims_hourly' AND name = 'dims_by_day'"
    )
    assert parts.result_rows[0][0] >= 1
    days = await store.query(
        "SELECT sum(clicks) FROM clicks_dims_hourly WHERE dim = 'device' "
        "AND toDate(hour) >= '2025-03-01' AND toDate(hour) < '2025-04-01'"
    )
    assert days == [(3,)]


def _wait_for_mutations(client: Any) -> None:
    # The projection is built by a background mutation; wait until it is.
    for _ in range(200):
        pending = client.command(
            "SELECT count() FROM system.mutations WHERE NOT is_done"
        )
        if int(pending) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("mutations still pending after 10 s")


def _entries(link_id: int, seconds: list[int]) -> list[tuple[str, list[Click]]]:
    base = 1_741_500_000_000
    return [
        (
            f"{base + s * 1000 + 5}-0",
            [Click(link_id, "c", base + s * 1000, ip=f"203.0.113.{s}")],
        )
        for s in seconds
    ]


async def _rollup_counts(store: AnalyticsStore, link_id: int) -> tuple[int, ...]:
    params = {"link": link_id}
    raw = await store.query(
        "SELECT count() FROM clicks FINAL WHERE link_id = {link:UInt64}", params
    )
    hourly = await store.query(
        "SELECT sum(clicks), uniqMerge(visitors) FROM clicks_hourly "
        "WHERE link_id = {link:UInt64}",
        params,
    )
    daily = await store.query(
        "SELECT sum(clicks) FROM clicks_daily WHERE link_id = {link:UInt64}", params
    )
    dims = await store.query(
        "SELECT sum(clicks) FROM clicks_dims_hourly "
        "WHERE link_id = {link:UInt64} AND dim = 'device'",
        params,
    )
    return raw[0][0], hourly[0][0], hourly[0][1], daily[0][0], dims[0][0]


async def test_rollups_exact_when_redelivery_cuts_batches_elsewhere(
    store: AnalyticsStore,
) -> None:
    sink = IngestSink(store)
    entries = _entries(11, [0, 1, 2, 3, 4, 5])

    # First delivery in two batches; the redelivery after a reclaim cuts
    # them differently, and a plain retry repeats the first batch.
    await sink.write("s", entries[:4])
    await sink.write("s", entries[4:])
    await sink.write("s", entries[2:])
    await sink.write("s", entries[:4])

    assert await _rollup_counts(store, 11) == (6, 6, 6, 6, 6)


async def test_rollups_split_humans_and_bots(store: AnalyticsStore) -> None:
    sink = IngestSink(store)
    human = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
    clicks = [
        Click(12, "c", 1_741_500_000_000, ip="203.0.113.1", user_agent=human),
        Click(12, "c", 1_741_500_000_001, ip="203.0.113.1", user_agent=human),
        Click(12, "c", 1_741_500_000_002, user_agent="Twitterbot/1.0"),
    ]
    await sink.write("s", [("1741500000000-0", clicks)])

    rows = await store.query(
        "SELECT bot, sum(clicks), uniqMerge(visitors) FROM clicks_hourly "
        "WHERE link_id = 12 GROUP BY bot ORDER BY bot"
    )
    assert rows == [(0, 2, 1), (1, 1, 1)]


def test_acquire_shares_one_store_per_dsn(
    store: AnalyticsStore, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {}, data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path / 'chdb'}"
    )
    again = analytics.acquire(settings)
    try:
        assert again is store
    finally:
        analytics.release(again)
    assert analytics.store._SHARED[settings.clickhouse_dsn][0] is store


def test_settings_check_analytics_fields(tmp_path: Path) -> None:
    from boltlink.errors import ConfigError

    db = tmp_path / "geo.mmdb"
    db.write_bytes(b"x")
    env: dict[str, Any] = {
        "BOLTLINK_CLICKS_TTL_DAYS": "400",
        "BOLTLINK_IP_STORAGE": "DROP",
        "BOLTLINK_GEOIP_DB": str(db),
        "BOLTLINK_CLICKHOUSE_CLUSTER": "prod",
    }
    settings = Settings.from_env(env)
    assert (settings.clicks_ttl_days, settings.ip_storage) == (400, "drop")
    assert (settings.geoip_db, settings.clickhouse_cluster) == (db, "prod")
    for name, bad in [
        ("BOLTLINK_CLICKS_TTL_DAYS", "-1"),
        ("BOLTLINK_IP_STORAGE", "keep"),
        ("BOLTLINK_GEOIP_DB", str(tmp_path / "missing.mmdb")),
        ("BOLTLINK_CLICKHOUSE_CLUSTER", "prod'; DROP"),
    ]:
        with pytest.raises(ConfigError):
            Settings.from_env({name: bad})
