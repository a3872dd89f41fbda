"""Serve click statistics under ``/api/v1`` (scope ``analytics:read``).

The ClickHouse client opens on the first stats request, not at start-up,
so a worker that never serves stats never touches ClickHouse. It is the
process's shared store (:func:`boltlink.analytics.acquire`): with chDB the
ingest loop of the embedded profile and these views use one client.

This module serves a link's stats and the overview of a key's links, and
gathers the routes of the cross-link views (:mod:`boltlink.web.globalstats`).
"""

from __future__ import annotations

import itertools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from boltlink.analytics.overview import overview
from boltlink.analytics.queries import (
    BOT_FILTERS,
    INTERVALS,
    StatsQuery,
    bucket_starts,
    link_stats,
)
from boltlink.errors import LinkNotFound, ValidationFailed
from boltlink.web import globalstats
from boltlink.web.api import authorize
from boltlink.web.runtime import Runtime
from boltlink.web.statsparams import (
    UINT64_END,
    analytics_store,
    choice,
    close_analytics,
    decode_cursor,
    encode_cursor,
    iso,
    json_response,
    key_scope,
    link_param,
    page_limit,
    read_range,
    refuse_unknown,
    zone_name,
)

__all__ = ["close_analytics", "routes"]

_MAX_BUCKETS = 2000
_OVERVIEW_PAGE = 10
_OVERVIEW_MAX_PAGE = 200
_LINK_STATS_PARAMS = {"from", "to", "tz", "interval", "bots"}
_OVERVIEW_PARAMS = {"from", "to", "tz", "bots", "link", "code", "limit", "cursor"}


def _stats_query(request: Request) -> StatsQuery:
    """Read and check from, to, interval, tz and bots."""
    tz = zone_name(request)
    interval = choice(request, "interval", INTERVALS, "day")
    bots = choice(request, "bots", BOT_FILTERS, "exclude")
    start, end = read_range(request, tz)

    query = StatsQuery(start=start, end=end, interval=interval, tz=tz, bots=bots)
    buckets = itertools.islice(bucket_starts(query), _MAX_BUCKETS + 1)
    if sum(1 for _ in buckets) > _MAX_BUCKETS:
        raise ValidationFailed(
            f"the range holds more than {_MAX_BUCKETS} {interval} buckets; "
            "use a wider interval",
            field="interval",
        )
    return query


async def get_link_stats(request: Request) -> Response:
    """Return a link's totals, time series and top dimensions."""
    await authorize(request, "analytics:read")
    refuse_unknown(request, _LINK_STATS_PARAMS)
    query = _stats_query(request)
    runtime: Runtime = request.app.state.runtime
    code = request.path_params["code"]
    link = await runtime.store.get_link(code)
    if link is None:
        raise LinkNotFound(f"code {code!r} not found")

    store = await analytics_store(request)
    stats = await link_stats(store, link.id, query)
    return json_response(
        {
            "code": link.code,
            "from": iso(query.start),
            "to": iso(query.end),
            "interval": query.interval,
            "tz": query.tz,
            "bots": query.bots,
            **stats,
        }
    )


async def get_overview(request: Request) -> Response:
    """Return the totals of the key's links and a page of its busiest links."""
    key = await authorize(request, "analytics:read")
    refuse_unknown(request, _OVERVIEW_PARAMS)
    tz = zone_name(request)
    start, end = read_range(request, tz)
    scope = await key_scope(request, key, start=start, end=end, tz=tz)
    limit = page_limit(request, _OVERVIEW_PAGE, _OVERVIEW_MAX_PAGE)
    question = [
        "overview",
        key.id,
        iso(start),
        iso(end),
        scope.bots,
        link_param(request),
    ]
    after = _overview_cursor(decode_cursor(request, question))

    store = await analytics_store(request)
    found = await overview(store, scope, limit=limit, after=after)
    runtime: Runtime = request.app.state.runtime
    codes = await runtime.store.link_codes([link_id for link_id, _ in found["links"]])
    links = [{"code": codes.get(i, ""), **m} for i, m in found["links"]]
    last = found["links"][-1] if found["links"] else None
    next_cursor = None
    if found["more"] and last is not None:
        next_cursor = encode_cursor(question, [last[1]["clicks"], last[0]])
    return json_response(
        {
            "from": iso(start),
            "to": iso(end),
            "bots": scope.bots,
            "totals": found["totals"],
            "links": links,
            "next_cursor": next_cursor,
        }
    )


def _overview_cursor(position: list[Any] | None) -> tuple[int, int] | None:
    if position is None:
        return None
    if len(position) != 2 or not all(
        type(v) is int and 0 <= v < UINT64_END for v in position
    ):
        raise ValidationFailed("cursor is not valid for this query", field="cursor")
    return position[0], position[1]


routes = [
    Route("/links/{code}/stats", get_link_stats, methods=["GET"]),
    Route("/stats/overview", get_overview, methods=["GET"]),
    *globalstats.routes,
]
