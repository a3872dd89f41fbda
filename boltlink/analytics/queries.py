"""Answer stats questions from the rollups, in ClickHouse, never in Python.

A question names a time range, a bucket interval, an IANA time zone and a
bot filter. It is answered from the cheapest source that is still exact:

- ``clicks_daily`` when the zone is UTC throughout and the range starts and
  ends on UTC midnights (day, week and month buckets);
- ``clicks_hourly`` when every offset of the zone in the range is a whole
  number of hours and the range starts and ends on the hour: a UTC hour
  then lies inside one local hour, day, week and month, DST included;
- the raw table otherwise (zones such as Asia/Kolkata at UTC+05:30, or a
  range that starts mid-hour), still bucketed by ClickHouse in the zone.

Buckets are local wall-clock periods that exist. An hour bucket holds the
instants that share a local date, hour and UTC offset: a repeated hour after
a fall-back is a bucket of its own, and the part of an hour left after a
30-minute shift (Australia/Lord_Howe) is one too, starting at the shift. A
day, week or month bucket holds the instants of its local dates; a skipped
date (Pacific/Apia, 2011-12-30) has no bucket. Every bucket starts at its
first real instant, so each click falls in exactly one bucket and the series
sums to the totals. ClickHouse keys each click by the same rule
(``toDate``, ``toHour``, ``timeZoneOffset``, ``toMonday``,
``toStartOfMonth`` in the zone) and the series is gap-filled here, so a
bucket with no click reads zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from boltlink.analytics.schema import DIMENSIONS
from boltlink.analytics.store import AnalyticsReader

__all__ = [
    "BOT_CONDITION",
    "BOT_FILTERS",
    "DAILY",
    "HOURLY",
    "INTERVALS",
    "RAW",
    "Source",
    "StatsQuery",
    "bucket_starts",
    "link_stats",
    "measures_of",
    "measures_sql",
    "range_sql",
    "source_for",
]

INTERVALS = ("hour", "day", "week", "month")
BOT_FILTERS = ("exclude", "include", "only")
TOP_LIMIT = 10

BOT_CONDITION = {"exclude": "bot = 0", "include": "1", "only": "bot = 1"}


@dataclass(frozen=True)
class StatsQuery:
    """One stats question: a half-open UTC range, buckets, zone, bot filter."""

    start: datetime
    end: datetime
    interval: str = "day"
    tz: str = "UTC"
    bots: str = "exclude"

    @property
    def zone(self) -> ZoneInfo:
        """Return the time zone buckets are cut in."""
        return ZoneInfo(self.tz)


@dataclass(frozen=True)
class Source:
    """Where a question is answered: a table, its time column, its measures."""

    table: str
    time: str
    clicks: str
    visitors: str
    dims: str


DAILY = Source(
    "clicks_daily", "day", "clicks", "uniqMergeIf(visitors, {c})", "clicks_dims_hourly"
)
HOURLY = Source(
    "clicks_hourly",
    "hour",
    "clicks",
    "uniqMergeIf(visitors, {c})",
    "clicks_dims_hourly",
)
RAW = Source("clicks FINAL", "ts", "1", "uniqIf(visitor, {c})", "")


def _offsets(query: StatsQuery) -> set[int]:
    # Offsets change a few times a year; one sample a day finds them all.
    zone, moment, seen = query.zone, query.start, set()
    while moment <= query.end:
        offset = moment.astimezone(zone).utcoffset() or timedelta()
        seen.add(int(offset.total_seconds()))
        moment += timedelta(days=1)
    last = query.end.astimezone(zone).utcoffset() or timedelta()
    seen.add(int(last.total_seconds()))
    return seen


def source_for(query: StatsQuery) -> Source:
    offsets = _offsets(query)
    start, end = query.start.timestamp(), query.end.timestamp()
    whole_days = start % 86_400 == end % 86_400 == 0
    if offsets == {0} and whole_days and query.interval != "hour":
        return DAILY
    if all(o % 3600 == 0 for o in offsets) and start % 3600 == end % 3600 == 0:
        return HOURLY
    return RAW


def _bucket_sql(source: Source, interval: str) -> str:
    t = source.time
    if source is DAILY:
        return {"day": t, "week": f"toMonday({t})", "month": f"toStartOfMonth({t})"}[
            interval
        ]
    return {
        # Not toStartOfHour: in zones with a half-hour offset it counts hours
        # from local midnight, which a 30-minute DST shift knocks off the hour.
        "hour": (
            f"concat(toString(toDate({t}, {{tz:String}})), ' ', "
            f"toString(toHour({t}, {{tz:String}})), '|', "
            f"toString(timeZoneOffset(toTimeZone({t}, {{tz:String}}))))"
        ),
        "day": f"toDate({t}, {{tz:String}})",
        "week": f"toMonday({t}, {{tz:String}})",
        "month": f"toStartOfMonth({t}, {{tz:String}})",
    }[interval]


def range_sql(column: str) -> str:
    if column == "day":
        return (
            "day >= toDate({start:DateTime64(3, 'UTC')}) "
            "AND day < toDate({end:DateTime64(3, 'UTC')})"
        )
    return (
        f"{column} >= {{start:DateTime64(3, 'UTC')}} "
        f"AND {column} < {{end:DateTime64(3, 'UTC')}}"
    )


def _params(query: StatsQuery, link_id: int) -> dict[str, Any]:
    return {
        "link": link_id,
        "start": query.start,
        "end": query.end,
        "tz": query.tz,
    }


async def link_stats(
    store: AnalyticsReader, link_id: int, query: StatsQuery
) -> dict[str, Any]:
    """Return totals, the gap-filled series and the top dimensions of a link."""
    source = source_for(query)
    params = _params(query, link_id)
    condition = BOT_CONDITION[query.bots]
    where = f"link_id = {{link:UInt64}} AND {range_sql(source.time)}"
    measures = measures_sql(source, condition)

    totals = await store.query(
        f"SELECT {measures} FROM {source.table} WHERE {where}", params
    )
    rows = await store.query(
        f"SELECT toString({_bucket_sql(source, query.interval)}) AS bucket, "
        f"{measures} FROM {source.table} WHERE {where} GROUP BY bucket",
        params,
    )
    top = await _top(store, source, condition, params)
    return {
        "totals": measures_of(totals[0] if totals else (0, 0, 0, 0)),
        "series": _fill(query, {row[0]: row[1:] for row in rows}),
        "top": top,
    }


def measures_sql(source: Source, condition: str) -> str:
    """Return the select list of clicks, human, bot and visitors."""
    return (
        # Aliases differ from column names: ClickHouse would resolve a
        # column named like an alias to the aggregate itself.
        f"sumIf({source.clicks}, {condition}) AS total_clicks, "
        f"sumIf({source.clicks}, bot = 0) AS human_clicks, "
        f"sumIf({source.clicks}, bot = 1) AS bot_clicks, "
        f"{source.visitors.format(c=condition)} AS unique_visitors"
    )


def measures_of(row: tuple[Any, ...]) -> dict[str, int]:
    clicks, human, bot, visitors = row
    return {
        "clicks": int(clicks),
        "human": int(human),
        "bot": int(bot),
        "visitors": int(visitors),
    }


async def _top(
    store: AnalyticsReader,
    source: Source,
    condition: str,
    params: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    # The hourly dimension rollup serves every rollup-exact question; the
    # raw fallback unfolds the same pairs from the raw rows.
    if source.dims:
        where = f"link_id = {{link:UInt64}} AND {range_sql('hour')}"
        sql = (
            f"SELECT dim, value, sum(clicks) AS n FROM {source.dims} "
            f"WHERE {where} AND {condition} "
        )
    else:
        pairs = ", ".join(
            f"('{dim}', toString({column}))" for dim, column in DIMENSIONS.items()
        )
        where = f"link_id = {{link:UInt64}} AND {range_sql('ts')}"
        sql = (
            "SELECT pair.1 AS dim, pair.2 AS value, count() AS n FROM clicks FINAL "
            f"ARRAY JOIN [{pairs}] AS pair WHERE {where} AND {condition} "
        )
    sql += f"GROUP BY dim, value ORDER BY dim, n DESC, value LIMIT {TOP_LIMIT} BY dim"
    top: dict[str, list[dict[str, Any]]] = {dim: [] for dim in DIMENSIONS}
    for dim, value, count in await store.query(sql, params):
        top[dim].append({"value": value, "clicks": int(count)})
    return top


def _fill(query: StatsQuery, found: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    series = []
    for key, start in bucket_starts(query):
        row = measures_of(found.get(key, (0, 0, 0, 0)))
        series.append({"start": start.isoformat(), **row})
    return series


def bucket_starts(query: StatsQuery) -> Iterator[tuple[str, datetime]]:
    """Yield (ClickHouse bucket key, local start) of every bucket in range."""
    zone = query.zone
    if query.interval == "hour":
        moment = _hour_start(query.start, zone)
        while moment < query.end:
            yield _hour_key(moment), moment
            moment = _next_hour_start(moment, zone)
        return
    day = _floor_date(query.start.astimezone(zone).date(), query.interval)
    while (start := _first_instant(day, zone)) < query.end:
        # A date the zone skipped entirely is no day bucket (Apia, 2011).
        if query.interval != "day" or start.date() == day:
            yield day.isoformat(), start
        day = _next_date(day, query.interval)


def _hour_key(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta()
    return f"{moment.date()} {moment.hour}|{int(offset.total_seconds())}"


def _offset_at(second: int, zone: ZoneInfo) -> int:
    offset = datetime.fromtimestamp(second, zone).utcoffset() or timedelta()
    return int(offset.total_seconds())


def _first_change(low: int, high: int, zone: ZoneInfo) -> int:
    # The first second in (low, high] whose offset differs from low's.
    offset = _offset_at(low, zone)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset_at(middle, zone) == offset:
            low = middle
        else:
            high = middle
    return high


def _hour_start(moment: datetime, zone: ZoneInfo) -> datetime:
    """Return the first instant of the hour bucket holding ``moment``."""
    second = int(moment.timestamp())
    offset = _offset_at(second, zone)
    wall_hour = second - (second + offset) % 3600
    if _offset_at(wall_hour, zone) != offset:
        # The offset changed within this wall hour: the bucket starts there.
        wall_hour = _first_change(wall_hour, second, zone)
    return datetime.fromtimestamp(wall_hour, zone)


def _next_hour_start(moment: datetime, zone: ZoneInfo) -> datetime:
    """Return the first instant after ``moment``'s hour bucket."""
    second = int(moment.timestamp())
    offset = _offset_at(second, zone)
    following = second - (second + offset) % 3600 + 3600
    if _offset_at(following - 1, zone) != offset:
        following = _first_change(second, following - 1, zone)
    return datetime.fromtimestamp(following, zone)


def _first_instant(day: date, zone: ZoneInfo) -> datetime:
    # A local midnight skipped by a shift reads as the shift itself, the
    # first real instant at or after it (PEP 495, fold=0).
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    return midnight.astimezone(UTC).astimezone(zone)


def _floor_date(day: date, interval: str) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def _next_date(day: date, interval: str) -> date:
    if interval == "week":
        return day + timedelta(days=7)
    if interval == "month":
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return day + timedelta(days=1)
