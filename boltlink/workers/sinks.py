"""Write click batches to the link store (aggregate) and ClickHouse (ingest)."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from boltlink.analytics import AnalyticsStore
from boltlink.clicks import Click
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


class IngestSink:
    """Insert every click into ClickHouse's ``clicks`` table."""

    name = "ingest"

    def __init__(self, analytics: AnalyticsStore) -> None:
        self._analytics = analytics

    async def write(
        self, stream: str, entries: Sequence[tuple[str, list[Click]]]
    ) -> None:
        """Insert the batch with its deduplication token."""
        await self._analytics.insert_clicks(stream, entries)
