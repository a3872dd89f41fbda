"""Read the timestamps BoltLink accepts: RFC 3339, and plain dates for ranges.

Python's ``datetime.fromisoformat`` reads far more than RFC 3339 (week
dates, basic format without separators, offsets with seconds), so the API
would silently accept forms it never documented; these readers take only
the documented shapes and hand the rest back as ``None``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

__all__ = ["parse_date_or_time", "parse_rfc3339"]

# RFC 3339 section 5.6: full-date "T" full-time, "T" and "Z" in either case.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
# A range bound may also be a date, or a local date-time without an offset.
_LOCAL = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime | None:
    """Return the aware moment ``text`` names, or None if it is not RFC 3339."""
    found = _RFC3339.fullmatch(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction = found.groups()[:7]
    zulu, sign, off_hours, off_minutes = found.groups()[7:]
    if zulu:
        zone: tzinfo = UTC
    else:
        offset = timedelta(hours=int(off_hours), minutes=int(off_minutes))
        if offset >= timedelta(hours=24) or int(off_minutes) > 59:
            return None
        zone = timezone(-offset if sign == "-" else offset)
    return _build(year, month, day, hour, minute, second, fraction, zone)


def parse_date_or_time(text: str, zone: tzinfo) -> datetime | None:
    """Return an RFC 3339 moment, or a date or local date-time read in ``zone``."""
    moment = parse_rfc3339(text)
    if moment is not None:
        return moment
    found = _LOCAL.fullmatch(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction = found.groups()
    return _build(year, month, day, hour or "0", minute or "0", second, fraction, zone)


def _build(
    year: str,
    month: str,
    day: str,
    hour: str,
    minute: str,
    second: str | None,
    fraction: str | None,
    zone: tzinfo,
) -> datetime | None:
    micros = int((fraction or "0").ljust(6, "0")[:6])
    try:
        date(int(year), int(month), int(day))
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            micros,
            tzinfo=zone,
        )
    except ValueError:
        return None
