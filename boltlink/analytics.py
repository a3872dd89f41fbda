"""Keep click events in ClickHouse (a server, or chDB in the data folder).

Inserts are idempotent twice over: each batch carries an insert
deduplication token derived from its stream entry ids, so a retried batch
is dropped by ClickHouse itself; and the table is a ``ReplacingMergeTree``
keyed on the event id, so an event inserted again in another batch
collapses at merge time and is never counted twice by ``FINAL`` reads.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from boltlink.clicks import Click
from boltlink.errors import BackendUnavailable

__all__ = ["COLUMNS", "AnalyticsStore", "click_rows"]

COLUMNS = (
    "event_id",
    "link_id",
    "code",
    "ts",
    "ip",
    "user_agent",
    "referrer",
    "accept_language",
    "country",
)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS clicks (
        event_id String CODEC(ZSTD(1)),
        link_id UInt64,
        code String CODEC(ZSTD(1)),
        ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
        ip String CODEC(ZSTD(1)),
        user_agent String CODEC(ZSTD(3)),
        referrer String CODEC(ZSTD(3)),
        accept_language LowCardinality(String),
        country LowCardinality(String)
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(ts)
    ORDER BY (link_id, ts, event_id)
    SETTINGS non_replicated_deduplication_window = 10000
    """,
)


def click_rows(entries: Sequence[tuple[str, list[Click]]]) -> list[list[Any]]:
    """Return one table row per click, in entry order."""
    rows: list[list[Any]] = []
    for entry_id, clicks in entries:
        for index, click in enumerate(clicks):
            rows.append(
                [
                    f"{entry_id}/{index}",
                    click.link_id,
                    click.code,
                    datetime.fromtimestamp(click.ts_ms / 1000, UTC),
                    click.ip,
                    click.user_agent,
                    click.referrer,
                    click.accept_language,
                    click.country,
                ]
            )
    return rows


def dedup_token(stream: str, entry_ids: Sequence[str]) -> str:
    """Return the insert deduplication token of a batch of entries."""
    digest = hashlib.sha256(stream.encode())
    for entry_id in entry_ids:
        digest.update(b"\0" + entry_id.encode())
    return digest.hexdigest()


class AnalyticsStore:
    """Create the analytics schema and write click batches to it.

    clickhouse-connect is synchronous; calls run in a worker thread, one at a
    time, since a chDB session is not safe to share between threads at once.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = asyncio.Lock()

    def migrate(self) -> None:
        """Create the tables that do not exist yet."""
        for statement in _SCHEMA:
            self._client.command(statement)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except Exception as exc:
                raise BackendUnavailable(f"clickhouse call failed: {exc}") from exc

    async def insert_clicks(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> int:
        """Insert the clicks of ``entries``; return the number of rows sent."""
        rows = click_rows(entries)
        if not rows:
            return 0
        token = dedup_token(stream, [entry_id for entry_id, _ in entries])
        await self._call(
            self._client.insert,
            "clicks",
            rows,
            column_names=list(COLUMNS),
            settings={"insert_deduplication_token": token},
        )
        return len(rows)

    async def count_clicks(self, link_id: int | None = None) -> int:
        """Return the exact number of stored clicks, of one link or of all."""
        where = "" if link_id is None else f" WHERE link_id = {int(link_id)}"
        result = await self._call(
            self._client.query, f"SELECT count() FROM clicks FINAL{where}"
        )
        return int(result.result_rows[0][0])

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._call(self._client.command, "SELECT 1")

    def close(self) -> None:
        """Close the client."""
        self._client.close()
