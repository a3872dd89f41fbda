"""Count clicks grouped by one key, filtered by dimensions, page by page.

A question is answered from a rollup when one can answer it exactly:

- by a dimension, filtered on that dimension at most: ``clicks_dims_hourly``
  (the range on whole UTC hours);
- by link or by day, with no dimension filter: the rollup a link's stats
  would read (``clicks_daily`` or ``clicks_hourly``);
- anything else (a filter on another dimension, a range off the hour, a
  half-hour zone for days): ``clicks FINAL``, still grouped by ClickHouse.

Groups come in a total order (busiest first, ties by key; days in calendar
order), so a keyset cursor pages through them without gaps or repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any

from boltlink.analytics.queries import (
    DAILY,
    RAW,
    Source,
    measures_sql,
    range_sql,
)
from boltlink.analytics.schema import DIMENSIONS
from boltlink.analytics.scope import Scope
from boltlink.analytics.store import AnalyticsReader

__all__ = ["GROUP_KEYS", "GroupQuery", "grouped_counts"]

GROUP_KEYS = (*DIMENSIONS, "link", "day")


@dataclass(frozen=True)
class GroupQuery:
    """Group clicks of a scope by one key, keeping rows that pass the filters.

    ``filters`` maps a dimension to the values it may take; ``after`` is the
    (clicks, key) of the last group of the previous page.
    """

    scope: Scope
    group_by: str
    limit: int
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    after: tuple[int, str | int] | None = None


@dataclass(frozen=True)
class _Plan:
    table: str
    key: str
    key_type: str
    where: list[str]
    measures: str


async def grouped_counts(store: AnalyticsReader, query: GroupQuery) -> dict[str, Any]:
    """Return one page of groups: key, clicks, human and bot clicks."""
    plan = _plan(query)
    params = {**query.scope.params(), **_filter_params(query)}
    having = ["total_clicks > 0"]
    if query.after is not None:
        having.append(_after_sql(query.group_by, plan.key_type))
        params.update(after_n=query.after[0], after_key=query.after[1])

    order = "key" if query.group_by == "day" else "total_clicks DESC, key"
    rows = await store.query(
        f"SELECT {plan.key} AS key, {plan.measures} FROM {plan.table} "
        f"WHERE {' AND '.join(plan.where)} GROUP BY key "
        f"HAVING {' AND '.join(having)} ORDER BY {order} "
        f"LIMIT {int(query.limit) + 1}",
        params,
    )
    groups = [
        {"key": row[0], "clicks": int(row[1]), "human": int(row[2]), "bot": int(row[3])}
        for row in rows[: query.limit]
    ]
    return {"groups": groups, "more": len(rows) > query.limit}


def _plan(query: GroupQuery) -> _Plan:
    scope, group = query.scope, query.group_by
    others = [dim for dim in query.filters if dim != group]
    source = scope.source(zoned=group == "day")
    hourly = source is not RAW
    where = [scope.link_condition()]
    condition = scope.bot_condition()

    if group in DIMENSIONS and hourly and not others:
        # The dimension rollup holds one row per value of each dimension;
        # it answers a question about one dimension at a time.
        where.append("dim = {group:String}")
        where += [f"value IN {{f_{d}:Array(String)}}" for d in query.filters]
        if source is DAILY:
            return _by_day_plan(scope, where, condition)
        where.append(range_sql("hour"))
        measures = measures_sql(_DIMS, condition)
        return _Plan("clicks_dims_hourly", "value", "String", where, measures)

    if query.filters:
        source = RAW
    where.append(range_sql(source.time))
    where += [f"{DIMENSIONS[d]} IN {{f_{d}:Array(String)}}" for d in query.filters]
    key, key_type = _key(source, group)
    # Groups carry no visitor counts: merging uniq states is the costly
    # part of a rollup read, and the dimension rollup has none to merge.
    measures = measures_sql(replace(source, visitors="0"), condition)
    return _Plan(source.table, key, key_type, where, measures)


# The dimension rollup has clicks but no visitor states.
_DIMS = Source("clicks_dims_hourly", "hour", "clicks", "0", "")
_BY_DAY = Source("", "", "c", "0", "")


def _by_day_plan(scope: Scope, where: list[str], condition: str) -> _Plan:
    # Over whole UTC days the inner query is the shape of the rollup's
    # dims_by_day projection (grouped by dimension, day, link, bot, value),
    # so ClickHouse reads the projection instead of the hourly rows.
    # NOTE: the days are literals (of validated datetimes), not bound
    # parameters: ClickHouse matches no projection through a parameter's
    # cast.
    start, end = (
        m.astimezone(UTC).date().isoformat() for m in (scope.start, scope.end)
    )
    days = f"toDate(hour) >= '{start}' AND toDate(hour) < '{end}'"
    inner = (
        "(SELECT value, bot, sum(clicks) AS c FROM clicks_dims_hourly "
        f"WHERE {' AND '.join([*where, days])} GROUP BY value, bot)"
    )
    return _Plan(inner, "value", "String", ["1"], measures_sql(_BY_DAY, condition))


def _key(source: Source, group: str) -> tuple[str, str]:
    if group == "link":
        return "link_id", "UInt64"
    if group == "day":
        if source is DAILY:
            return "toString(day)", "String"
        return f"toString(toDate({source.time}, {{tz:String}}))", "String"
    return f"toString({DIMENSIONS[group]})", "String"


def _filter_params(query: GroupQuery) -> dict[str, Any]:
    params: dict[str, Any] = {f"f_{d}": list(v) for d, v in query.filters.items()}
    params["group"] = query.group_by
    return params


def _after_sql(group: str, key_type: str) -> str:
    after_key = f"{{after_key:{key_type}}}"
    if group == "day":
        return f"key > {after_key}"
    return (
        "(total_clicks < {after_n:UInt64} OR "
        f"(total_clicks = {{after_n:UInt64}} AND key > {after_key}))"
    )
