"""Test the timestamp readers: RFC 3339 only, and dates for range bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from boltlink.timestamps import parse_date_or_time, parse_rfc3339

_KOLKATA = ZoneInfo("Asia/Kolkata")


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01t00:00:00z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01 00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01T12:30:15.25+05:30", datetime(2027, 1, 1, 7, 0, 15, 250000, tzinfo=UTC)),
        ("2027-01-01T00:00:00.123456789-23:59", datetime(2027, 1, 1, 23, 59, 0, 123456, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2024-02-29T00:00:00+00:00", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_parse_rfc3339_reads_every_documented_form(text: str, moment: datetime) -> None:
    parsed = parse_rfc3339(text)

    assert parsed == moment
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "20270101T000000Z",
        "2027-W01-1T00:00Z",
        "2027-01-01T00:00:00+00:00:30",
        "2027-01-01T00:00:00Z\x00",
        "2027-01-01T00:00:00",
        "2027-01-01",
        "2027-01-01T00:00Z",
        "2027-02-30T00:00:00Z",
        "2027-13-01T00:00:00Z",
        "2027-01-01T24:00:00Z",
        "2027-01-01T00:00:00+24:00",
        "2027-01-01T00:00:00+05:60",
        " 2027-01-01T00:00:00Z",
        "\uff12\uff10\uff12\uff17-01-01T00:00:00Z",
        "",
    ],
)
def test_parse_rfc3339_refuses_other_shapes(text: str) -> None:
    assert parse_rfc3339(text) is None


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-03-09", datetime(2026, 3, 9, tzinfo=_KOLKATA)),
        ("2026-03-09T10:15", datetime(2026, 3, 9, 10, 15, tzinfo=_KOLKATA)),
        ("2026-03-09T10:15:30.5", datetime(2026, 3, 9, 10, 15, 30, 500000, tzinfo=_KOLKATA)),
        ("2026-03-09T10:15:30Z", datetime(2026, 3, 9, 10, 15, 30, tzinfo=UTC)),
        ("2026-03-09T10:15:30-01:00", datetime(2026, 3, 9, 10, 15, 30, tzinfo=timezone(-timedelta(hours=1)))),
    ],
)  # fmt: skip
def test_parse_date_or_time_reads_dates_in_the_zone(
    text: str, moment: datetime
) -> None:
    assert parse_date_or_time(text, _KOLKATA) == moment


@pytest.mark.parametrize(
    "text", ["20261201", "2026-W49", "2026-12", "2026-12-01T1", "now"]
)
def test_parse_date_or_time_refuses_other_shapes(text: str) -> None:
    assert parse_date_or_time(text, UTC) is None
