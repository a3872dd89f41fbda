"""Serve clicks across links: grouped counts and the raw event export.

Both answer for the links the key may see (all of them for an admin key,
else the links it created), under scope ``analytics:read``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from boltlink.analytics.export import (
    FORMATS,
    export_sql,
)
from boltlink.analytics.grouped import GROUP_KEYS, GroupQuery, grouped_counts
from boltlink.analytics.schema import DIMENSIONS
from boltlink.errors import BackendUnavailable, ValidationFailed
from boltlink.web.api import authorize
from boltlink.web.runtime import Runtime
from boltlink.web.statsparams import (
    UINT64_END,
    analytics_store,
    choice,
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

__all__ = ["routes"]

logger = logging.getLogger("boltlink.api")

_GROUP_PAGE = 50
_GROUP_MAX_PAGE = 1000
_MAX_FILTER_VALUES = 50
_MAX_VALUE_LENGTH = 256
_DEVICES = ("desktop", "mobile", "tablet", "bot", "other")
_COUNTRY = re.compile(r"([A-Z]{2})?")

_COMMON = {"from", "to", "tz", "bots", "link", "code"}
_GLOBAL_PARAMS = _COMMON | {"group_by", "limit", "cursor", *DIMENSIONS}
_EXPORT_PARAMS = _COMMON | {"format"}


def _filters(request: Request) -> dict[str, tuple[str, ...]]:
    """Return dimension -> accepted values; repeat a parameter for several."""
    filters: dict[str, tuple[str, ...]] = {}
    for dim in DIMENSIONS:
        values = request.query_params.getlist(dim)
        if not values:
            continue
        if len(values) > _MAX_FILTER_VALUES:
            raise ValidationFailed(
                f"{dim} takes at most {_MAX_FILTER_VALUES} values", field=dim
            )
        filters[dim] = tuple(_filter_value(dim, value) for value in values)
    return filters


def _filter_value(dim: str, value: str) -> str:
    if len(value) > _MAX_VALUE_LENGTH:
        raise ValidationFailed(
            f"{dim} must be at most {_MAX_VALUE_LENGTH} characters", field=dim
        )
    if dim == "country" and not _COUNTRY.fullmatch(value.upper()):
        raise ValidationFailed(
            f"country must be an ISO 3166 alpha-2 code, got {value!r}", field=dim
        )
    if dim == "device" and value not in _DEVICES:
        raise ValidationFailed(
            f"device must be one of {', '.join(_DEVICES)}, got {value!r}", field=dim
        )
    return value.upper() if dim == "country" else value


def _is_group_key(key: Any, group: str) -> bool:
    if group != "link":
        return type(key) is str
    # A link id is a ClickHouse UInt64: a negative one is no position.
    return type(key) is int and 0 <= key < UINT64_END


def _group_cursor(position: list[Any] | None, group: str) -> tuple[int, Any] | None:
    if position is None:
        return None
    valid = (
        len(position) == 2
        and type(position[0]) is int
        and 0 <= position[0] < UINT64_END
        and _is_group_key(position[1], group)
    )
    if not valid:
        raise ValidationFailed("cursor is not valid for this query", field="cursor")
    return position[0], position[1]


async def get_global(request: Request) -> Response:
    """Return click counts grouped by one key, filtered, one page per call."""
    key = await authorize(request, "analytics:read")
    refuse_unknown(request, _GLOBAL_PARAMS)
    group = choice(request, "group_by", GROUP_KEYS, "day")
    tz = zone_name(request)
    start, end = read_range(request, tz)
    filters = _filters(request)
    limit = page_limit(request, _GROUP_PAGE, _GROUP_MAX_PAGE)
    scope = await key_scope(request, key, start=start, end=end, tz=tz)

    question = [
        "global", key.id, group, iso(start), iso(end), tz, scope.bots,
        link_param(request), sorted(filters.items()),
    ]  # fmt: skip
    after = _group_cursor(decode_cursor(request, question), group)
    query = GroupQuery(scope, group, limit, filters, after)
    found = await grouped_counts(await analytics_store(request), query)
    groups = found["groups"]

    next_cursor = None
    if found["more"] and groups:
        next_cursor = encode_cursor(question, [groups[-1]["clicks"], groups[-1]["key"]])
    if group == "link":
        await _name_links(request, groups)
    return json_response(
        {
            "from": iso(start),
            "to": iso(end),
            "tz": tz,
            "bots": scope.bots,
            "group_by": group,
            "filters": {dim: list(values) for dim, values in filters.items()},
            "groups": groups,
            "next_cursor": next_cursor,
        }
    )


async def _name_links(request: Request, groups: list[dict[str, Any]]) -> None:
    # Groups by link carry the link id from ClickHouse; the API speaks codes.
    runtime: Runtime = request.app.state.runtime
    codes = await runtime.store.link_codes([group["key"] for group in groups])
    for group in groups:
        group["key"] = codes.get(group["key"], "")


async def get_export(request: Request) -> Response:
    """Stream the raw events of a range as CSV, JSON lines or Parquet."""
    key = await authorize(request, "analytics:read")
    refuse_unknown(request, _EXPORT_PARAMS)
    name = choice(request, "format", tuple(FORMATS), "csv")
    tz = zone_name(request)
    start, end = read_range(request, tz)
    scope = await key_scope(request, key, start=start, end=end, tz=tz)

    store = await analytics_store(request)
    fmt = FORMATS[name]
    sql, params = export_sql(scope), scope.params()
    stream = store.export(name, sql, params)
    await stream.start()

    filename = f"clicks-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.{fmt.suffix}"
    return _ExportResponse(
        stream.chunks(),
        media_type=fmt.media_type,
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


class _ExportResponse(StreamingResponse):
    """Stream an export; when its backend is lost midway, cut the body short."""

    async def stream_response(self, send: Send) -> None:
        """Send the chunks, and the end of the body only if all were sent."""
        start = {"status": self.status_code, "headers": self.raw_headers}
        await send({"type": "http.response.start", **start})
        try:
            async for chunk in self.body_iterator:
                body = chunk.encode() if isinstance(chunk, str) else chunk
                await send(
                    {"type": "http.response.body", "body": body, "more_body": True}
                )
        except BackendUnavailable as exc:
            # The 200 is sent. Returning without the body's end makes the
            # server close the connection before the last chunk (RFC 9112
            # section 7.1): the client sees an incomplete transfer, not a
            # shorter file that looks whole.
            logger.warning("analytics export cut short: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


routes = [
    Route("/analytics/global", get_global, methods=["GET"]),
    Route("/analytics/export", get_export, methods=["GET"]),
]
