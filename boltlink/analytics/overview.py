"""Total a key's clicks and rank its links, all in ClickHouse.

The totals and the ranking read the same rollup as a link's stats
(``clicks_daily`` for a range on UTC midnights, ``clicks_hourly`` on whole
hours, ``clicks FINAL`` otherwise). Links are ranked by clicks, then by id,
a total order, so a keyset cursor ``(clicks, link id)`` pages through them
without gaps or repeats while the data stands still.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from boltlink.analytics.queries import Source, measures_of, measures_sql, range_sql
from boltlink.analytics.scope import Scope
from boltlink.analytics.store import AnalyticsReader

__all__ = ["overview"]

#: Where the next page starts: (clicks, link id) of the last row seen.
Cursor = tuple[int, int]


async def overview(
    store: AnalyticsReader, scope: Scope, *, limit: int, after: Cursor | None = None
) -> dict[str, Any]:
    """Return the scope's totals and one page of its links, busiest first."""
    source = scope.source(zoned=False)
    condition = scope.bot_condition()
    where = f"{scope.link_condition()} AND {range_sql(source.time)}"
    measures = measures_sql(source, condition)
    params = scope.params()

    totals = await store.query(
        f"SELECT {measures}, uniqExactIf(link_id, {condition}) AS busy_links "
        f"FROM {source.table} WHERE {where}",
        params,
    )
    # Rank on sums alone, then merge visitor states for one page of links:
    # merging the states of every link is the costly part of the ranking.
    ranked = await store.query(
        f"SELECT link_id, {measures_sql(replace(source, visitors='0'), condition)} "
        f"FROM {source.table} WHERE {where} "
        f"GROUP BY link_id HAVING total_clicks > 0 AND {_after_sql(after)} "
        f"ORDER BY total_clicks DESC, link_id LIMIT {int(limit) + 1}",
        {**params, **_after_params(after)},
    )
    page = [int(row[0]) for row in ranked[:limit]]
    visitors = await _visitors(store, source, condition, {**params, "page": page})
    row = totals[0] if totals else (0, 0, 0, 0, 0)
    return {
        "totals": {**measures_of(row[:4]), "links": int(row[4])},
        "links": [
            (link_id, measures_of((*r[1:4], visitors.get(link_id, 0))))
            for link_id, r in zip(page, ranked, strict=False)
        ],
        "more": len(ranked) > limit,
    }


async def _visitors(
    store: AnalyticsReader, source: Source, condition: str, params: dict[str, Any]
) -> dict[int, int]:
    if not params["page"]:
        return {}
    rows = await store.query(
        f"SELECT link_id, {source.visitors.format(c=condition)} FROM {source.table} "
        f"WHERE link_id IN {{page:Array(UInt64)}} AND {range_sql(source.time)} "
        "GROUP BY link_id",
        params,
    )
    return {int(link_id): int(count) for link_id, count in rows}


def _after_sql(after: Cursor | None) -> str:
    if after is None:
        return "1"
    return (
        "(total_clicks < {after_n:UInt64} OR "
        "(total_clicks = {after_n:UInt64} AND link_id > {after_id:UInt64}))"
    )


def _after_params(after: Cursor | None) -> dict[str, Any]:
    return {} if after is None else {"after_n": after[0], "after_id": after[1]}
