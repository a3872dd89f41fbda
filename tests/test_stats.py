"""Test the stats API: exact buckets in UTC, New York and Kolkata, and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from boltlink import analytics
from boltlink.clicks import Click
from boltlink.workers.sinks import IngestSink

pytestmark = pytest.mark.redis

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

# Human clicks around midnight UTC and the 2025-03-09 US DST change (02:00
# EST -> 03:00 EDT, at 07:00 UTC), with their local days in each zone.
#        UTC time            New York        Kolkata
EVENTS = [
    "2025-03-08T23:30:00",  # Mar 8 18:30   Mar 9 05:00
    "2025-03-09T00:30:00",  # Mar 8 19:30   Mar 9 06:00
    "2025-03-09T06:30:00",  # Mar 9 01:30   Mar 9 12:00  (EST)
    "2025-03-09T07:30:00",  # Mar 9 03:30   Mar 9 13:00  (EDT)
    "2025-03-09T18:45:00",  # Mar 9 14:45   Mar 10 00:15
    "2025-03-10T03:59:00",  # Mar 9 23:59   Mar 10 09:29
    "2025-03-10T04:00:00",  # Mar 10 00:00  Mar 10 09:30
]
BOT_AT = "2025-03-09T06:30:00"


def _ms(moment: str) -> int:
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
async def link(client: Any, auth: Any, app: Any, settings: Any) -> AsyncIterator[Any]:
    """Create a link and ingest the fixed events for it."""
    body = {"url": "https://example.com/dst"}
    created = (await client.post("/api/v1/links", json=body, headers=auth)).json()
    stored = await app.state.runtime.store.get_link(created["code"])
    store = analytics.acquire(settings)
    clicks = [
        Click(stored.id, stored.code, _ms(at), ip=f"203.0.113.{n}", user_agent=CHROME)
        for n, at in enumerate(EVENTS)
    ]
    clicks.append(Click(stored.id, stored.code, _ms(BOT_AT), user_agent=GOOGLEBOT))
    entries = [(f"{c.ts_ms}-{n}", [c]) for n, c in enumerate(clicks)]
    try:
        sink = IngestSink(store)
        await sink.write("s", entries)
        await sink.write("s", entries)  # a redelivery changes nothing
        yield stored
    finally:
        analytics.release(store)


async def _stats(client: Any, auth: Any, code: str, **params: str) -> Any:
    response = await client.get(
        f"/api/v1/links/{code}/stats", params=params, headers=auth
    )
    assert response.status_code == 200, response.text
    return response.json()


def _series(body: Any) -> list[tuple[str, int]]:
    return [(point["start"], point["clicks"]) for point in body["series"]]


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (
            "UTC",
            [
                ("2025-03-08T00:00:00+00:00", 1),
                ("2025-03-09T00:00:00+00:00", 4),
                ("2025-03-10T00:00:00+00:00", 2),
            ],
        ),
        (
            "America/New_York",
            [
                ("2025-03-08T00:00:00-05:00", 2),
                ("2025-03-09T00:00:00-05:00", 4),
                ("2025-03-10T00:00:00-04:00", 1),
            ],
        ),
        (
            "Asia/Kolkata",
            [
                ("2025-03-08T00:00:00+05:30", 0),
                ("2025-03-09T00:00:00+05:30", 4),
                ("2025-03-10T00:00:00+05:30", 3),
            ],
        ),
    ],
)
async def test_stats_daily_buckets_exact_in_each_zone(
    client: Any, auth: Any, link: Any, tz: str, expected: list[tuple[str, int]]
) -> None:
    body = await _stats(
        client, auth, link.code, **{"from": "2025-03-08", "to": "2025-03-11", "tz": tz}
    )

    assert _series(body) == expected
    assert body["totals"] == {"clicks": 7, "human": 7, "bot": 1, "visitors": 7}
    assert sum(point["clicks"] for point in body["series"]) == 7


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
async def test_stats_with_bots_sums_to_link_counter(
    client: Any, auth: Any, link: Any, tz: str
) -> None:
    params = {"from": "2025-03-08", "to": "2025-03-11", "tz": tz, "bots": "include"}
    body = await _stats(client, auth, link.code, **params)

    assert body["totals"]["clicks"] == 8
    assert sum(point["clicks"] for point in body["series"]) == 8
    assert sum(point["bot"] for point in body["series"]) == 1
    only = await _stats(client, auth, link.code, **{**params, "bots": "only"})
    assert only["totals"]["clicks"] == 1
    assert only["top"]["device"] == [{"value": "bot", "clicks": 1}]


async def test_stats_hourly_series_skips_the_missing_dst_hour(
    client: Any, auth: Any, link: Any
) -> None:
    params = {
        "from": "2025-03-09",
        "to": "2025-03-10",
        "tz": "America/New_York",
        "interval": "hour",
    }
    body = await _stats(client, auth, link.code, **params)

    starts = [point["start"] for point in body["series"]]
    assert len(starts) == 23
    assert "2025-03-09T01:00:00-05:00" in starts
    assert "2025-03-09T03:00:00-04:00" in starts
    assert not any(s.startswith("2025-03-09T02:") for s in starts)
    busy = {p["start"]: p["clicks"] for p in body["series"] if p["clicks"]}
    assert busy == {
        "2025-03-09T01:00:00-05:00": 1,
        "2025-03-09T03:00:00-04:00": 1,
        "2025-03-09T14:00:00-04:00": 1,
        "2025-03-09T23:00:00-04:00": 1,
    }


async def test_stats_hourly_buckets_on_half_hours_in_kolkata(
    client: Any, auth: Any, link: Any
) -> None:
    params = {
        "from": "2025-03-10T00:00:00+05:30",
        "to": "2025-03-10T12:00:00+05:30",
        "tz": "Asia/Kolkata",
        "interval": "hour",
    }
    body = await _stats(client, auth, link.code, **params)

    busy = {p["start"]: p["clicks"] for p in body["series"] if p["clicks"]}
    assert len(body["series"]) == 12
    assert busy == {
        "2025-03-10T00:00:00+05:30": 1,
        "2025-03-10T09:00:00+05:30": 2,
    }


async def test_stats_week_and_month_buckets(client: Any, auth: Any, link: Any) -> None:
    params = {"from": "2025-03-01", "to": "2025-04-01", "tz": "America/New_York"}
    weeks = await _stats(client, auth, link.code, **params, interval="week")
    months = await _stats(client, auth, link.code, **params, interval="month")

    assert [p for p in _series(weeks) if p[1]] == [
        ("2025-03-03T00:00:00-05:00", 6),
        ("2025-03-10T00:00:00-04:00", 1),
    ]
    assert _series(months) == [("2025-03-01T00:00:00-05:00", 7)]


async def test_stats_top_dimensions(client: Any, auth: Any, link: Any) -> None:
    body = await _stats(
        client, auth, link.code, **{"from": "2025-03-08", "to": "2025-03-11"}
    )

    assert body["top"]["browser"] == [{"value": "Chrome", "clicks": 7}]
    assert body["top"]["os"] == [{"value": "Windows", "clicks": 7}]
    assert body["top"]["device"] == [{"value": "desktop", "clicks": 7}]
    assert body["top"]["country"] == [{"value": "", "clicks": 7}]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"interval": "minute"}, "interval"),
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"bots": "some"}, "bots"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2025-03-10", "to": "2025-03-09"}, "from"),
        ({"from": "2000-01-01", "to": "2025-01-01"}, "from"),
        ({"from": "2024-01-01", "to": "2025-01-01", "interval": "hour"}, "interval"),
    ],
)
async def test_stats_bad_parameters_get_problem_document(
    client: Any, auth: Any, link: Any, params: dict[str, str], field: str
) -> None:
    response = await client.get(
        f"/api/v1/links/{link.code}/stats", params=params, headers=auth
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == field


async def test_stats_unknown_code_is_404(client: Any, auth: Any) -> None:
    response = await client.get("/api/v1/links/nope/stats", headers=auth)

    assert response.status_code == 404


async def test_stats_needs_an_api_key(client: Any) -> None:
    response = await client.get("/api/v1/links/nope/stats")

    assert response.status_code == 401


# Clicks around shifts that are not a whole hour, or a whole day. Lord Howe
# falls back 30 minutes at 2026-04-04T15:00Z (02:00 +11:00 -> 01:30 +10:30)
# and springs forward at 2026-10-03T15:30Z (02:00 +10:30 -> 02:30 +11:00);
# Samoa skipped 2011-12-30 at 2011-12-30T10:00Z (-10:00 -> +14:00).
SHIFT_EVENTS = [
    "2026-04-04T14:59:59",  # Apr 5 01:59:59 +11:00
    "2026-04-04T15:00:00",  # Apr 5 01:30:00 +10:30, the repeated half hour
    "2026-04-04T15:29:59",  # Apr 5 01:59:59 +10:30
    "2026-04-04T15:30:00",  # Apr 5 02:00:00 +10:30
    "2026-10-03T15:29:59",  # Oct 4 01:59:59 +10:30
    "2026-10-03T15:30:00",  # Oct 4 02:30:00 +11:00, the first instant of 02
    "2026-10-03T15:59:59",  # Oct 4 02:59:59 +11:00
    "2026-10-03T16:00:00",  # Oct 4 03:00:00 +11:00
    "2011-12-30T09:59:59",  # Dec 29 23:59:59 -10:00
    "2011-12-30T10:00:00",  # Dec 31 00:00:00 +14:00
    "2011-12-31T22:00:00",  # Jan 1 12:00:00 +14:00
]


@pytest.fixture
async def shift_link(
    client: Any, auth: Any, app: Any, settings: Any
) -> AsyncIterator[Any]:
    """Create a link and ingest the clicks around odd shifts for it."""
    body = {"url": "https://example.com/shift"}
    created = (await client.post("/api/v1/links", json=body, headers=auth)).json()
    stored = await app.state.runtime.store.get_link(created["code"])
    store = analytics.acquire(settings)
    entries = [
        (
            f"{_ms(at)}-{n}",
            [Click(stored.id, stored.code, _ms(at), f"198.51.100.{n}", CHROME)],
        )
        for n, at in enumerate(SHIFT_EVENTS)
    ]
    try:
        await IngestSink(store).write("s", entries)
        yield stored
    finally:
        analytics.release(store)


def _hours(day: str, first: list[str], rest: range, offset: str) -> list[str]:
    return first + [f"{day}T{h:02d}:00:00{offset}" for h in rest]


async def test_stats_hourly_half_hour_fall_back_has_the_repeated_half_hour(
    client: Any, auth: Any, shift_link: Any
) -> None:
    params = {"from": "2026-04-05", "to": "2026-04-06", "interval": "hour"}
    body = await _stats(
        client, auth, shift_link.code, tz="Australia/Lord_Howe", **params
    )

    expected = _hours(
        "2026-04-05",
        [
            "2026-04-05T00:00:00+11:00",
            "2026-04-05T01:00:00+11:00",
            "2026-04-05T01:30:00+10:30",
        ],
        range(2, 24),
        "+10:30",
    )
    assert [point["start"] for point in body["series"]] == expected
    busy = {p["start"]: p["clicks"] for p in body["series"] if p["clicks"]}
    assert busy == {
        "2026-04-05T01:00:00+11:00": 1,
        "2026-04-05T01:30:00+10:30": 2,
        "2026-04-05T02:00:00+10:30": 1,
    }
    assert body["totals"]["clicks"] == 4


async def test_stats_hourly_half_hour_spring_forward_starts_at_the_shift(
    client: Any, auth: Any, shift_link: Any
) -> None:
    params = {"from": "2026-10-04", "to": "2026-10-05", "interval": "hour"}
    body = await _stats(
        client, auth, shift_link.code, tz="Australia/Lord_Howe", **params
    )

    expected = _hours(
        "2026-10-04",
        [
            "2026-10-04T00:00:00+10:30",
            "2026-10-04T01:00:00+10:30",
            "2026-10-04T02:30:00+11:00",
        ],
        range(3, 24),
        "+11:00",
    )
    assert [point["start"] for point in body["series"]] == expected
    busy = {p["start"]: p["clicks"] for p in body["series"] if p["clicks"]}
    assert busy == {
        "2026-10-04T01:00:00+10:30": 1,
        "2026-10-04T02:30:00+11:00": 2,
        "2026-10-04T03:00:00+11:00": 1,
    }
    assert body["totals"]["clicks"] == 4


async def test_stats_daily_series_has_no_bucket_for_a_skipped_day(
    client: Any, auth: Any, shift_link: Any
) -> None:
    params = {"from": "2011-12-29", "to": "2012-01-02", "tz": "Pacific/Apia"}
    body = await _stats(client, auth, shift_link.code, **params)

    assert _series(body) == [
        ("2011-12-29T00:00:00-10:00", 1),
        ("2011-12-31T00:00:00+14:00", 1),
        ("2012-01-01T00:00:00+14:00", 1),
    ]
    assert body["totals"]["clicks"] == 3
