"""Serve click statistics under ``/api/v1`` (scope ``analytics:read``).

The ClickHouse client opens on the first stats request, not at start-up,
so a worker that never serves stats never touches ClickHouse. It is the
process's shared store (:func:`boltlink.analytics.acquire`): with chDB the
ingest loop of the embedded profile and these views use one client.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from boltlink import analytics
from boltlink.analytics.queries import (
    BOT_FILTERS,
    INTERVALS,
    StatsQuery,
    bucket_starts,
    link_stats,
)
from boltlink.errors import LinkNotFound, ValidationFailed
from boltlink.web.api import authorize
from boltlink.web.runtime import Runtime

__all__ = ["close_analytics", "routes"]

_MAX_BUCKETS = 2000
_MAX_RANGE = timedelta(days=3660)
_DEFAULT_RANGE = timedelta(days=30)
_TZ_SHAPE = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")


async def _analytics(request: Request) -> analytics.AnalyticsStore:
    app: Starlette = request.app
    # One lock per app, made without an await, so two first requests do
    # not both open the store.
    lock = getattr(app.state, "analytics_lock", None)
    if lock is None:
        lock = app.state.analytics_lock = asyncio.Lock()
    async with lock:
        store: analytics.AnalyticsStore | None = getattr(app.state, "analytics", None)
        if store is None:
            runtime: Runtime = app.state.runtime
            store = await asyncio.to_thread(analytics.acquire, runtime.settings)
            app.state.analytics = store
    return store


async def close_analytics(app: Starlette) -> None:
    """Give back the app's analytics store, if a request opened one."""
    store = getattr(app.state, "analytics", None)
    if store is not None:
        app.state.analytics = None
        await asyncio.to_thread(analytics.release, store)


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


# -- parameters ------------------------------------------------------------------


def _choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name, default)
    if value not in choices:
        raise ValidationFailed(
            f"{name} must be one of {', '.join(choices)}, got {value!r}", field=name
        )
    return value


def _zone(request: Request) -> str:
    name = request.query_params.get("tz", "UTC")
    try:
        if not _TZ_SHAPE.fullmatch(name):
            raise ValueError(name)
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValidationFailed(
            f"tz must be an IANA time zone name, got {name!r}", field="tz"
        ) from None
    return name


def _moment(request: Request, name: str, zone: ZoneInfo) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an ISO 8601 date or date-time, got {raw!r}", field=name
        ) from None
    # A date, or a date-time without offset, is read in the requested zone.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def _stats_query(request: Request) -> StatsQuery:
    """Read and check from, to, interval, tz and bots."""
    tz = _zone(request)
    zone = ZoneInfo(tz)
    interval = _choice(request, "interval", INTERVALS, "day")
    bots = _choice(request, "bots", BOT_FILTERS, "exclude")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    end = _moment(request, "to", zone) or now + timedelta(hours=1)
    start = _moment(request, "from", zone) or end - _DEFAULT_RANGE

    if start >= end:
        raise ValidationFailed("from must be before to", field="from")
    if end - start > _MAX_RANGE:
        raise ValidationFailed("the range must not exceed 3660 days", field="from")
    query = StatsQuery(start=start, end=end, interval=interval, tz=tz, bots=bots)
    buckets = itertools.islice(bucket_starts(query), _MAX_BUCKETS + 1)
    if sum(1 for _ in buckets) > _MAX_BUCKETS:
        raise ValidationFailed(
            f"the range holds more than {_MAX_BUCKETS} {interval} buckets; "
            "use a wider interval",
            field="interval",
        )
    return query


# -- views -------------------------------------------------------------------------


async def get_link_stats(request: Request) -> Response:
    """Return a link's totals, time series and top dimensions."""
    await authorize(request, "analytics:read")
    query = _stats_query(request)
    runtime: Runtime = request.app.state.runtime
    code = request.path_params["code"]
    link = await runtime.store.get_link(code)
    if link is None:
        raise LinkNotFound(f"code {code!r} not found")

    store = await _analytics(request)
    stats = await link_stats(store, link.id, query)
    return _json(
        {
            "code": link.code,
            "from": query.start.isoformat().replace("+00:00", "Z"),
            "to": query.end.isoformat().replace("+00:00", "Z"),
            "interval": query.interval,
            "tz": query.tz,
            "bots": query.bots,
            **stats,
        }
    )


routes = [
    Route("/links/{code}/stats", get_link_stats, methods=["GET"]),
]
