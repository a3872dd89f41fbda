"""Render the analytics DDL: the raw clicks table and its rollups.

One node gets plain MergeTree-family tables. With a cluster name the same
tables are created ``ON CLUSTER`` as ``Replicated*`` engines under a
``_local`` suffix, and a ``Distributed`` table of the plain name sits over
each, sharded by link id so every event of a link lives on one shard (a
``ReplacingMergeTree`` collapses duplicates only within a shard). Queries
and inserts name only the plain tables, whatever the topology.

Rollups are fed by materialized views, which fire on each inserted block:

- ``clicks_hourly`` and ``clicks_daily``: clicks and a ``uniq`` state of
  visitor hashes per link, per UTC hour or day, per bot flag;
- ``clicks_dims_hourly``: clicks per link, UTC hour, bot flag and value of
  each dimension (country, referrer, browser, os, device), with a projection
  ``dims_by_day`` summed per dimension, UTC day, link, bot flag and value:
  a question across links about one dimension over whole days reads only
  that dimension's rows of the range.

A projection is kept by ClickHouse itself, on every insert and merge
(``deduplicate_merge_projection_mode = 'rebuild'`` re-aggregates it when
parts of the aggregating table merge); ``MATERIALIZE PROJECTION`` builds it
for parts written before it existed, a mutation that is safe to repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIMENSIONS", "DIMS_BY_DAY", "RAW_COLUMNS", "Schema"]

#: The raw table's columns, in insert order, with their types and codecs.
RAW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "String CODEC(ZSTD(1))"),
    ("link_id", "UInt64"),
    ("code", "String CODEC(ZSTD(1))"),
    ("ts", "DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1))"),
    ("ip", "String CODEC(ZSTD(1))"),
    ("user_agent", "String CODEC(ZSTD(3))"),
    ("referrer", "String CODEC(ZSTD(3))"),
    ("accept_language", "LowCardinality(String)"),
    ("country", "LowCardinality(String)"),
    ("city", "LowCardinality(String)"),
    ("referrer_host", "LowCardinality(String)"),
    ("browser", "LowCardinality(String)"),
    ("browser_version", "LowCardinality(String)"),
    ("os", "LowCardinality(String)"),
    ("os_version", "LowCardinality(String)"),
    ("device", "LowCardinality(String)"),
    ("language", "LowCardinality(String)"),
    ("bot", "UInt8"),
    ("bot_kind", "LowCardinality(String)"),
    ("bot_name", "LowCardinality(String)"),
    ("visitor", "UInt64 CODEC(ZSTD(1))"),
)

#: The projection of ``clicks_dims_hourly`` per dimension and UTC day.
DIMS_BY_DAY = "dims_by_day"

#: Dimension name -> raw column, as grouped by the dimension rollup.
DIMENSIONS: dict[str, str] = {
    "country": "country",
    "referrer": "referrer_host",
    "browser": "browser",
    "os": "os",
    "device": "device",
}

# Keep the last N insert tokens per table: a retried batch is dropped
# even on a single node (ClickHouse docs, "Deduplicating inserts on
# retries"); replicated tables keep their own window in Keeper.
_DEDUP_WINDOW = "non_replicated_deduplication_window = 10000"


@dataclass(frozen=True)
class Schema:
    """Render the DDL of one topology: one node, or a named cluster."""

    cluster: str = ""
    ttl_days: int = 0

    def statements(self) -> list[str]:
        """Return every statement, in an order that can run on a new database."""
        return [
            *self._table("clicks", self._raw_body()),
            *self._upgrades(),
            *self._rollup_tables(),
            *self._views(),
            *self._projections(),
            *([self._ttl()] if self.ttl_days else []),
        ]

    # -- naming ----------------------------------------------------------------

    def local(self, table: str) -> str:
        """Return the name of the table that holds ``table``'s data."""
        return f"{table}_local" if self.cluster else table

    def _on_cluster(self) -> str:
        return f" ON CLUSTER `{self.cluster}`" if self.cluster else ""

    def _engine(self, kind: str, table: str) -> str:
        if not self.cluster:
            return f"{kind}MergeTree"
        path = f"/clickhouse/tables/{{shard}}/{{database}}/{self.local(table)}"
        return f"Replicated{kind}MergeTree('{path}', '{{replica}}')"

    def _table(self, table: str, body: str) -> list[str]:
        name = self.local(table)
        statements = [
            f"CREATE TABLE IF NOT EXISTS {name}{self._on_cluster()} "
            + body.format(engine=self._engine(_KIND[table], table))
        ]
        if self.cluster:
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {table}{self._on_cluster()} AS {name} "
                f"ENGINE = Distributed('{self.cluster}', currentDatabase(), "
                f"{name}, cityHash64(link_id))"
            )
        return statements

    # -- tables ------------------------------------------------------------------

    def _raw_body(self) -> str:
        columns = ",\n    ".join(f"{name} {kind}" for name, kind in RAW_COLUMNS)
        # ORDER BY serves per-link time ranges; the event id last makes the
        # replacing key, so a duplicate event collapses at merge time and
        # FINAL reads never count it twice.
        return (
            f"(\n    {columns}\n)\n"
            "ENGINE = {engine}\n"
            "PARTITION BY toYYYYMM(ts)\n"
            "ORDER BY (link_id, ts, event_id)\n"
            f"SETTINGS {_DEDUP_WINDOW}"
        )

    def _rollup_tables(self) -> list[str]:
        visits = (
            "(\n    link_id UInt64,\n    {time},\n    bot UInt8,\n"
            "    clicks SimpleAggregateFunction(sum, UInt64),\n"
            "    visitors AggregateFunction(uniq, UInt64)\n)\n"
            "ENGINE = {{engine}}\nPARTITION BY {part}\n"
            "ORDER BY (link_id, {key}, bot)\n"
            f"SETTINGS {_DEDUP_WINDOW}"
        )
        dims = (
            "(\n    link_id UInt64,\n    hour DateTime('UTC'),\n    bot UInt8,\n"
            "    dim LowCardinality(String),\n    value String,\n"
            "    clicks SimpleAggregateFunction(sum, UInt64)\n)\n"
            "ENGINE = {engine}\nPARTITION BY toYYYYMM(hour)\n"
            "ORDER BY (link_id, dim, hour, bot, value)\n"
            f"SETTINGS {_DEDUP_WINDOW}"
        )
        hourly = visits.format(
            time="hour DateTime('UTC')", part="toYYYYMM(hour)", key="hour"
        )
        daily = visits.format(time="day Date", part="toYYYYMM(day)", key="day")
        return [
            *self._table("clicks_hourly", hourly),
            *self._table("clicks_daily", daily),
            *self._table("clicks_dims_hourly", dims),
        ]

    def _views(self) -> list[str]:
        # Views read the local raw table: on a cluster each shard rolls up
        # its own events into its own local rollups.
        raw = self.local("clicks")
        visits = (
            "SELECT link_id, {time}, bot, count() AS clicks, "
            f"uniqState(visitor) AS visitors FROM {raw} "
            "GROUP BY link_id, {key}, bot"
        )
        pairs = ", ".join(
            f"('{dim}', toString({column}))" for dim, column in DIMENSIONS.items()
        )
        dims = (
            "SELECT link_id, toStartOfHour(ts) AS hour, bot, pair.1 AS dim, "
            f"pair.2 AS value, count() AS clicks FROM {raw} "
            f"ARRAY JOIN [{pairs}] AS pair "
            "GROUP BY link_id, hour, bot, dim, value"
        )
        hourly = visits.format(time="toStartOfHour(ts) AS hour", key="hour")
        daily = visits.format(time="toDate(ts) AS day", key="day")
        return [
            self._view("clicks_hourly", hourly),
            self._view("clicks_daily", daily),
            self._view("clicks_dims_hourly", dims),
        ]

    def _view(self, target: str, select: str) -> str:
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self.local(target)}_mv"
            f"{self._on_cluster()} TO {self.local(target)} AS {select}"
        )

    def _projections(self) -> list[str]:
        dims = f"{self.local('clicks_dims_hourly')}{self._on_cluster()}"
        return [
            f"ALTER TABLE {dims} MODIFY SETTING "
            "deduplicate_merge_projection_mode = 'rebuild'",
            f"ALTER TABLE {dims} ADD PROJECTION IF NOT EXISTS {DIMS_BY_DAY} "
            "(SELECT dim, toDate(hour), link_id, bot, value, sum(clicks) "
            "GROUP BY dim, toDate(hour), link_id, bot, value)",
        ]

    def materialize(self, projection: str) -> str:
        """Return the mutation that builds ``projection`` for existing parts."""
        dims = f"{self.local('clicks_dims_hourly')}{self._on_cluster()}"
        return f"ALTER TABLE {dims} MATERIALIZE PROJECTION {projection}"

    def _upgrades(self) -> list[str]:
        # A raw table made by an earlier release lacks the enrichment
        # columns; adding them is a metadata-only change.
        raw = self.local("clicks")
        return [
            f"ALTER TABLE {raw}{self._on_cluster()} "
            f"ADD COLUMN IF NOT EXISTS {name} {kind}"
            for name, kind in RAW_COLUMNS[9:]
        ]

    def remove_ttl(self) -> str:
        """Return the statement that drops the raw table's TTL."""
        return f"ALTER TABLE {self.local('clicks')}{self._on_cluster()} REMOVE TTL"

    def _ttl(self) -> str:
        raw = self.local("clicks")
        return (
            f"ALTER TABLE {raw}{self._on_cluster()} MODIFY TTL "
            f"toDateTime(ts) + INTERVAL {int(self.ttl_days)} DAY"
        )


_KIND = {
    "clicks": "Replacing",
    "clicks_hourly": "Aggregating",
    "clicks_daily": "Aggregating",
    "clicks_dims_hourly": "Aggregating",
}
