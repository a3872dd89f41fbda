"""Test that ingest stores every value exactly, read back from chDB."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from boltlink import analytics
from boltlink.analytics import RAW_COLUMNS, AnalyticsStore
from boltlink.clicks import MAX_TS_MS, MIN_TS_MS, Click
from boltlink.enrich import Enricher, LocalSalts, visitor_hash
from boltlink.settings import Settings
from boltlink.workers.sinks import IngestSink

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    '(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1 \U0001f600 "q" \\ '
)
ODD = 'caf\u00e9\tbrowser\\"x"\u0000\u007f\u2028'
MAX_LINK = 2**63 - 1


class DaySalts(LocalSalts):
    """Salts known to the test: one per UTC day, named after it."""

    async def salt_for(self, day: date) -> bytes:
        """Return the salt of ``day``."""
        return f"salt-{day.isoformat()}".encode()


def _salt(ts_ms: int) -> bytes:
    return f"salt-{datetime.fromtimestamp(ts_ms / 1000, UTC).date()}".encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AnalyticsStore]:
    """Yield the shared, migrated store of a fresh chDB folder."""
    settings = Settings.from_env(
        {}, data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path / 'chdb'}"
    )
    shared = analytics.acquire(settings)
    try:
        yield shared
    finally:
        analytics.release(shared)


# Each click with what ingest must store from it, every column but the
# visitor hash (checked against visitor_hash below), ts as epoch ms and text.
CASES: list[tuple[Click, tuple[Any, ...]]] = [
    (
        Click(
            link_id=MAX_LINK,
            code="x" * 64,
            ts_ms=1_741_500_000_000,
            ip="203.0.113.77",
            user_agent=CHROME,
            referrer='https://News.Example.org./a?b="c"&d=\\e\tf\ng',
            accept_language="de-DE,de;q=0.9",
            country="us",
        ),
        (
            MAX_LINK, "x" * 64, 1_741_500_000_000, "2025-03-09 06:00:00.000",
            "203.0.113.0", CHROME, 'https://News.Example.org./a?b="c"&d=\\e\tf\ng',
            "de-DE,de;q=0.9", "US", "", "news.example.org",
            "Chrome", "131", "Windows", "10", "desktop", "de", 0, "", "",
        ),
    ),
    (
        Click(1, "", MIN_TS_MS, ip="2001:db8:1234:5678::1", user_agent=IPHONE),
        (
            1, "", MIN_TS_MS, "2000-01-01 00:00:00.000",
            "2001:db8:1234::", IPHONE, "", "", "", "", "",
            "Mobile Safari", "17", "iOS", "17", "mobile", "", 0, "", "",
        ),
    ),
    (
        Click(
            2**62,
            "a\"b'c\\",
            MIN_TS_MS + 1,
            ip="::ffff:198.51.100.200",
            user_agent="Twitterbot/1.0",
            referrer="android-app://com.slack",
            accept_language="*",
        ),
        (
            2**62, "a\"b'c\\", MIN_TS_MS + 1, "2000-01-01 00:00:00.001",
            "198.51.100.0", "Twitterbot/1.0", "android-app://com.slack", "*",
            "", "", "com.slack",
            "Twitterbot", "1", "", "", "bot", "", 1, "preview", "Twitterbot",
        ),
    ),
    (
        Click(5, "late", 1_741_564_799_999, ip="", user_agent=""),
        (
            5, "late", 1_741_564_799_999, "2025-03-09 23:59:59.999",
            "", "", "", "", "", "", "",
            "", "", "", "", "bot", "", 1, "unknown", "",
        ),
    ),
    (
        Click(
            5,
            "next",
            1_741_564_800_000,
            ip="2001:DB8::1",
            user_agent="curl/8.5.0",
            referrer="https://b\u00fccher.example/\u00fc?q=\U0001f600",
            accept_language="fr-CH, fr;q=0.9, en;q=0.8",
            country="FR",
        ),
        (
            5, "next", 1_741_564_800_000, "2025-03-10 00:00:00.000",
            "2001:db8::", "curl/8.5.0", "https://b\u00fccher.example/\u00fc?q=\U0001f600",
            "fr-CH, fr;q=0.9, en;q=0.8", "FR", "", "b\u00fccher.example",
            "curl", "8", "", "", "bot", "fr", 1, "crawler", "curl",
        ),
    ),
    (
        Click(
            6,
            "end",
            MAX_TS_MS - 1,
            ip="not-an-ip",
            user_agent=ODD,
            referrer="\u0000\r\n\t\\\"'",
            accept_language="en-US;q=0.5,es;q=0.7",
            country="fr",
        ),
        (
            6, "end", MAX_TS_MS - 1, "2199-12-31 23:59:59.999",
            "", ODD, "\u0000\r\n\t\\\"'", "en-US;q=0.5,es;q=0.7", "FR", "", "",
            "", "", "", "", "other", "es", 0, "", "",
        ),
    ),
    (
        Click(7, "lead", 1_741_500_000_999, ip="192.168.001.1", user_agent=CHROME),
        (
            7, "lead", 1_741_500_000_999, "2025-03-09 06:00:00.999",
            "", CHROME, "", "", "", "", "",
            "Chrome", "131", "Windows", "10", "desktop", "", 0, "", "",
        ),
    ),
]  # fmt: skip

_READ = (
    "SELECT event_id, link_id, code, toUnixTimestamp64Milli(ts), toString(ts), "
    "ip, user_agent, referrer, accept_language, country, city, referrer_host, "
    "browser, browser_version, os, os_version, device, language, bot, "
    "bot_kind, bot_name, visitor FROM clicks FINAL ORDER BY event_id"
)


async def test_ingest_stores_every_column_exactly(store: AnalyticsStore) -> None:
    sink = IngestSink(store, Enricher(DaySalts()))
    clicks = [click for click, _ in CASES]
    # One entry of several clicks, and entries a second apart, as batches come.
    await sink.write("s", [("e-1", clicks[:3]), ("e-2", clicks[3:5])])
    await sink.write("s", [("e-3", clicks[5:])])

    rows = await store.query(_READ)

    ids = ["e-1/0", "e-1/1", "e-1/2", "e-2/0", "e-2/1", "e-3/0", "e-3/1"]
    assert [row[0] for row in rows] == ids
    for row, (click, expected) in zip(rows, CASES, strict=True):
        assert row[1:-1] == expected
        assert row[-1] == visitor_hash(_salt(click.ts_ms), click.ip, click.user_agent)
    # A known salt, IP and agent give the hash every release stored, one
    # past 2**63 (a UInt64 that no signed 64-bit encoding may touch).
    assert rows[0][-1] == 12820033840885374213


async def test_ingest_stores_what_clickhouse_reads_from_python_values(
    store: AnalyticsStore,
) -> None:
    """Store random clicks, and the same rows as Python values, side by side.

    The reference table is filled by clickhouse-connect's own ``insert`` of
    Python values (a ``datetime`` for ``ts``), as ingest did before it sent
    encoded bytes; both tables must read back byte for byte the same.
    """
    chooser = random.Random(20261204)
    clicks = [_random_click(chooser) for _ in range(600)]
    entries = [(f"r-{n}", clicks[n * 6 : n * 6 + 6]) for n in range(100)]
    enricher = Enricher(DaySalts())
    await IngestSink(store, enricher).write("s", entries)

    client = store._client
    client.command(
        "CREATE TABLE reference AS clicks ENGINE = MergeTree ORDER BY () PARTITION BY tuple()"
    )
    rows = [
        _python_values(row)
        for key, group in entries
        for row in await enricher.rows(key, group)
    ]
    client.insert("reference", rows, column_names=[name for name, _ in RAW_COLUMNS])

    order = " ORDER BY event_id FORMAT TabSeparated"
    stored = client.raw_query("SELECT * FROM clicks" + order)
    reference = client.raw_query("SELECT * FROM reference" + order)
    assert stored.count(b"\n") == 600
    assert stored == reference


def _python_values(row: list[Any]) -> list[Any]:
    values = list(row)
    ts = values[3]
    if isinstance(ts, str):
        # ingest's rows carry the DateTime64 text "<seconds>.<ms>"
        seconds, _, millis = ts.partition(".")
        ts = int(seconds) * 1000 + int(millis)
    if isinstance(ts, int):
        values[3] = datetime.fromtimestamp(ts / 1000, UTC)
    return values


_PIECES = [
    "a", "Z", "0", " ", "\t", "\n", "\r", "\\", '"', "'", ",", ";", "=", "/",
    "\u0000", "\u0001", "\u001f", "\u007f", "\u0085", "\u00e9", "\u2028",
    "\ufeff", "\U0001f600", "\U0010ffff", "\\N", "NULL", "[", "]", "{", "}",
]  # fmt: skip


def _text(chooser: random.Random, longest: int) -> str:
    return "".join(chooser.choice(_PIECES) for _ in range(chooser.randint(0, longest)))


def _random_click(chooser: random.Random) -> Click:
    ip = chooser.choice(
        [
            "",
            f"{chooser.randint(0, 255)}.{chooser.randint(0, 255)}.7.9",
            f"2001:db8:{chooser.randint(0, 65535):x}::{chooser.randint(1, 9)}",
            "::ffff:203.0.113.5",
            _text(chooser, 8),
        ]
    )
    agent = chooser.choice([CHROME, IPHONE, ODD, "Twitterbot/1.0", ""])
    return Click(
        link_id=chooser.choice([1, MAX_LINK, chooser.randint(1, MAX_LINK)]),
        code=_text(chooser, 12),
        ts_ms=chooser.choice(
            [MIN_TS_MS, MAX_TS_MS - 1, chooser.randint(MIN_TS_MS, MAX_TS_MS - 1)]
        ),
        ip=ip,
        user_agent=agent + _text(chooser, 4),
        referrer=chooser.choice(["", "https://e.com/", "http://[::1]/"])
        + _text(chooser, 20),
        accept_language=_text(chooser, 6),
        country=chooser.choice(["", "us", "FR", "\u00e9"]),
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("date_time_input_format", "best_effort"),
        ("date_time_input_format", "best_effort_us"),
        ("session_timezone", "America/New_York"),
    ],
)
async def test_ingest_times_do_not_depend_on_session_settings(
    store: AnalyticsStore, setting: str, value: str
) -> None:
    store._client.set_client_setting(setting, value)
    times = [MIN_TS_MS, MIN_TS_MS + 1, 1_741_564_799_999, MAX_TS_MS - 1]
    clicks = [Click(1, "t", ts) for ts in times]
    await IngestSink(store).write("s", [("t-1", clicks)])

    rows = await store.query(
        "SELECT toUnixTimestamp64Milli(ts) FROM clicks ORDER BY event_id"
    )

    assert [row[0] for row in rows] == times


async def test_ingest_stores_every_millisecond_exactly(store: AnalyticsStore) -> None:
    # Times go to ClickHouse as seconds with a fraction: each must come back
    # to the millisecond, at both ends of the range, whole seconds and
    # fractions a double cannot hold exactly (0.001, 0.005, 0.999) included.
    chooser = random.Random(4)
    times = [MIN_TS_MS, MAX_TS_MS - 1, 1_733_300_000_000, 1_733_300_000_005]
    times += [s * 1000 + ms for s in (946_684_800, 1_733_300_000) for ms in (1, 999)]
    times += [1_733_300_000_000 + ms for ms in range(1_000)]
    # Random hours across the range (one block holds at most 100 months),
    # a hundred random milliseconds in each.
    for _ in range(50):
        hour = chooser.randint(MIN_TS_MS, MAX_TS_MS - 3_600_001)
        times += [hour + chooser.randint(0, 3_600_000) for _ in range(100)]
    await IngestSink(store).write("s", [("m-1", [Click(1, "t", ts) for ts in times])])

    rows = await store.query(
        "SELECT toUnixTimestamp64Milli(ts) FROM clicks ORDER BY ts"
    )

    assert [row[0] for row in rows] == sorted(times)


async def test_a_block_of_mismatched_columns_is_refused_whole(
    store: AnalyticsStore,
) -> None:
    columns = await Enricher(DaySalts()).block_columns(
        [("c-1", [Click(1, "a", MIN_TS_MS), Click(2, "b", MIN_TS_MS)])]
    )
    short = [*columns[:-1], columns[-1][:1]]

    with pytest.raises(ValueError, match="different lengths"):
        await store.insert_columns("t", short)
    with pytest.raises(ValueError, match="20 columns for 21"):
        await store.insert_columns("t", columns[:-1])
    assert await store.insert_columns("t", columns) == 2
    assert await store.count_clicks() == 2
