"""Read the query parameters the analytics routes share, and open the store.

Every malformed parameter raises ``ValidationFailed`` naming it, which the
app turns into a 422 problem document with ``code`` ``validation_error``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from boltlink import analytics
from boltlink.analytics.queries import BOT_FILTERS
from boltlink.analytics.relay import (
    RelayedStore,
    chdb_folder,
    reads_through_relay,
    relay_address,
)
from boltlink.analytics.scope import Scope
from boltlink.analytics.store import AnalyticsReader
from boltlink.errors import LinkNotFound, ValidationFailed
from boltlink.models import ApiKey
from boltlink.timestamps import parse_date_or_time
from boltlink.web.params import is_decimal
from boltlink.web.runtime import Runtime

__all__ = [
    "UINT64_END",
    "analytics_store",
    "choice",
    "close_analytics",
    "decode_cursor",
    "encode_cursor",
    "iso",
    "json_response",
    "key_scope",
    "link_param",
    "page_limit",
    "read_range",
    "refuse_unknown",
    "zone_name",
]

#: One past the largest ClickHouse UInt64 (a link id, a count) a cursor holds.
UINT64_END = 2**64
MAX_RANGE = timedelta(days=3660)
DEFAULT_RANGE = timedelta(days=30)
_TZ_SHAPE = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


async def analytics_store(request: Request) -> AnalyticsReader:
    """Return the app's analytics store, opening it on the first call."""
    app: Starlette = request.app
    # One lock per app, made without an await, so two first requests do
    # not both open the store.
    lock = getattr(app.state, "analytics_lock", None)
    if lock is None:
        lock = app.state.analytics_lock = asyncio.Lock()
    async with lock:
        store: AnalyticsReader | None = getattr(app.state, "analytics", None)
        if store is None:
            settings = request.app.state.runtime.settings
            if reads_through_relay(settings):
                store = RelayedStore(relay_address(chdb_folder(settings)))
            else:
                store = await asyncio.to_thread(analytics.acquire, settings)
            app.state.analytics = store
    return store


async def close_analytics(app: Starlette) -> None:
    """Give back the app's analytics store, if a request opened one."""
    store = getattr(app.state, "analytics", None)
    app.state.analytics = None
    if isinstance(store, analytics.AnalyticsStore):
        await asyncio.to_thread(analytics.release, store)


def json_response(body: Any) -> Response:
    """Return ``body`` as a JSON response."""
    return Response(orjson.dumps(body), media_type="application/json")


def iso(moment: datetime) -> str:
    """Return a UTC moment in ISO 8601 with a ``Z``."""
    return moment.isoformat().replace("+00:00", "Z")


# -- single parameters ---------------------------------------------------------


def choice(request: Request, name: str, choices: Sequence[str], default: str) -> str:
    """Return parameter ``name``, which must be one of ``choices``."""
    value = request.query_params.get(name, default)
    if value not in choices:
        raise ValidationFailed(
            f"{name} must be one of {', '.join(choices)}, got {value!r}", field=name
        )
    return value


def zone_name(request: Request) -> str:
    """Return the ``tz`` parameter, an IANA time zone name (default UTC)."""
    name = request.query_params.get("tz", "UTC")
    known = _zone_names()
    if not _TZ_SHAPE.fullmatch(name) or name.removeprefix("posix/") not in known:
        raise ValidationFailed(
            f"tz must be an IANA time zone name, got {name!r}", field="tz"
        )
    return name


@functools.cache
def _zone_names() -> frozenset[str]:
    # The IANA names (zone_name also takes their "posix/" copies), not every
    # file on the zone path: ClickHouse, which groups by the zone, cannot
    # load the "right/" (leap second) variants, and "localtime" is whatever
    # zone this machine is set to.
    return frozenset(available_timezones() - {"localtime"} | {"UTC"})


def _moment(request: Request, name: str, zone: ZoneInfo) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    # A date, or a date-time without offset, is read in the requested zone.
    moment = parse_date_or_time(raw, zone)
    if moment is None:
        raise ValidationFailed(
            f"{name} must be a date (2026-03-09) or an RFC 3339 date-time, "
            f"got {raw[:80]!r}",
            field=name,
        )
    # ClickHouse's DateTime64 reads years 1900 to 2299; clicks are newer.
    out_of_range = ValidationFailed(
        f"{name} must lie between 1970 and 2199, got {raw!r}", field=name
    )
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise out_of_range from None
    if not _EARLIEST <= moment <= _LATEST:
        raise out_of_range
    return moment


def read_range(request: Request, tz: str) -> tuple[datetime, datetime]:
    """Return the half-open UTC range of ``from`` and ``to``, checked."""
    zone = ZoneInfo(tz)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    end = _moment(request, "to", zone) or now + timedelta(hours=1)
    start = _moment(request, "from", zone) or end - DEFAULT_RANGE
    if start >= end:
        raise ValidationFailed("from must be before to", field="from")
    if end - start > MAX_RANGE:
        raise ValidationFailed("the range must not exceed 3660 days", field="from")
    return start, end


def refuse_unknown(request: Request, known: set[str]) -> None:
    """Refuse a query parameter the route does not read.

    An unknown parameter is most often a misspelt one (``form`` for
    ``from``); ignoring it would answer another question than the one asked.
    """
    for name in request.query_params:
        if name not in known:
            raise ValidationFailed(f"unknown parameter {name!r}", field=name)


def page_limit(request: Request, default: int, most: int) -> int:
    """Return the ``limit`` parameter, an integer from 1 to ``most``."""
    raw = request.query_params.get("limit", str(default))
    if not is_decimal(raw) or not 1 <= int(raw) <= most:
        raise ValidationFailed(
            f"limit must be an integer from 1 to {most}, got {raw!r}", field="limit"
        )
    return int(raw)


# -- cursors -------------------------------------------------------------------


def _fingerprint(question: Sequence[Any]) -> str:
    return hashlib.sha256(orjson.dumps(list(question))).hexdigest()[:12]


def encode_cursor(question: Sequence[Any], position: Sequence[Any]) -> str:
    """Return an opaque cursor for ``position`` in the answer to ``question``."""
    raw = orjson.dumps([_fingerprint(question), *position])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(request: Request, question: Sequence[Any]) -> list[Any] | None:
    """Return the position in the ``cursor`` parameter, made for ``question``.

    A cursor made for another question (other range, filters or grouping)
    is refused rather than silently misread.
    """
    cursor = request.query_params.get("cursor")
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
        if not isinstance(decoded, list) or decoded[0] != _fingerprint(question):
            raise ValueError(cursor)
    except (ValueError, IndexError, binascii.Error, orjson.JSONDecodeError):
        raise ValidationFailed(
            f"cursor {cursor[:64]!r} is not valid for this query", field="cursor"
        ) from None
    return list(decoded[1:])


# -- scope ---------------------------------------------------------------------


def link_param(request: Request) -> str | None:
    """Return the code in the ``link`` parameter, or its alias ``code``."""
    params = request.query_params
    return params.get("link", params.get("code"))


async def key_scope(
    request: Request, key: ApiKey, *, start: datetime, end: datetime, tz: str
) -> Scope:
    """Return the scope of a request: its links, its range, its bot filter.

    An admin key sees every link, any other key the links it created; a
    ``link`` (or ``code``) parameter narrows either to one link.
    """
    bots = choice(request, "bots", BOT_FILTERS, "exclude")
    runtime: Runtime = request.app.state.runtime
    admin = "admin" in key.scopes
    links = None if admin else tuple(await runtime.store.link_ids_created_by(key.id))

    code = link_param(request)
    if code is not None:
        link = await runtime.store.get_link(code)
        if link is None or (links is not None and link.id not in links):
            raise LinkNotFound(f"code {code!r} not found")
        links = (link.id,)
    return Scope(start=start, end=end, bots=bots, tz=tz, link_ids=links)
