"""Write click batches to the link store (aggregate) and ClickHouse (ingest)."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from boltlink.analytics import AnalyticsStore, dedup_token
from boltlink.clicks import Click, event_source
from boltlink.enrich import Enricher, GeoIp, LocalSalts, RedisSalts
from boltlink.settings import Settings
from boltlink.store import LinkStore

__all__ = ["AggregateSink", "IngestSink"]


class AggregateSink:
    """Fold clicks into per-link counters, once per stream entry."""

    name = "aggregate"

    def __init__(self, store: LinkStore) -> None:
        self._store = store

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        """Add each entry's clicks to their links in one transaction."""
        batch = []
        for entry_id, clicks in entries:
            counts = collections.Counter(click.link_id for click in clicks)
            batch.append((entry_id, counts))
        await self._store.apply_clicks(stream, batch)

    async def prune(self, older_than: datetime) -> int:
        """Forget entries applied before ``older_than``; return how many."""
        return await self._store.prune_applied(older_than)


class IngestSink:
    """Enrich every click and insert it into ClickHouse's ``clicks`` table.

    A batch is cut into blocks by the second of each entry's first click,
    each inserted under a token of its own. A block depends only on the
    entries of that second, not on where the consumer cut the batch, so a
    redelivered batch mostly re-forms the same blocks, which ClickHouse
    drops whole, rollups included (``docs/analytics.md``, "Exactness").
    """

    name = "ingest"

    def __init__(
        self, analytics: AnalyticsStore, enricher: Enricher | None = None
    ) -> None:
        self._analytics = analytics
        # NOTE: without an enricher from for_settings, visitor salts live in
        # this process only; unique counts then hold for one ingest process.
        self._enricher = enricher or Enricher(LocalSalts())

    @classmethod
    def for_settings(
        cls, analytics: AnalyticsStore, settings: Settings, redis: Any
    ) -> IngestSink:
        """Return a sink enriching as ``settings`` say, salts kept in ``redis``."""
        geoip = GeoIp(settings.geoip_db) if settings.geoip_db else None
        enricher = Enricher(
            RedisSalts(redis, settings.redis_prefix),
            ip_storage=settings.ip_storage,
            geoip=geoip,
        )
        return cls(analytics, enricher)

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        """Insert the batch, one deduplicated block per second of entries."""
        for block in _blocks(entries):
            sources = [(event_source(stream, key), clicks) for key, clicks in block]
            columns = await self._enricher.block_columns(sources)
            token = dedup_token(stream, [key for key, _ in block])
            await self._analytics.insert_columns(token, columns)

    def close(self) -> None:
        """Release what the enricher holds open."""
        self._enricher.close()


def _blocks(
    entries: Sequence[tuple[str, list[Click]]],
) -> list[list[tuple[str, list[Click]]]]:
    # Entries are keyed by write id, so time comes from their clicks.
    blocks: dict[int, list[tuple[str, list[Click]]]] = {}
    for key, clicks in sorted(entries, key=lambda e: (e[1][0].ts_ms, e[0])):
        blocks.setdefault(clicks[0].ts_ms // 1000, []).append((key, clicks))
    return list(blocks.values())
