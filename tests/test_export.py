"""Test the raw event export: CSV, JSON lines and Parquet, scoped and streamed."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from boltlink.analytics.export import EXPORT_COLUMNS
from tests.analytics_data import RANGE, World, build_world, make_key

pytestmark = pytest.mark.redis

URL = "/api/v1/analytics/export"


@pytest.fixture
async def world(client: Any, app: Any, settings: Any, auth: Any) -> World:
    """Create the keys, links and clicks of :mod:`tests.analytics_data`."""
    return await build_world(client, app, settings, auth)


async def _export(client: Any, headers: Any, **params: str) -> Any:
    response = await client.get(URL, params={**RANGE, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_export_csv_has_header_and_the_keys_human_clicks(
    client: Any, world: World
) -> None:
    response = await _export(client, world.auth, format="csv")

    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        'attachment; filename="clicks-20250309T0000-20250311T0000.csv"'
    )
    lines = response.text.splitlines()
    assert lines[0] == ",".join(f'"{name}"' for name in EXPORT_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["code"], r["ts"], r["country"]) for r in rows] == [
        ("alpha", "2025-03-09 01:00:00.000", "US"),
        ("alpha", "2025-03-09 02:00:00.000", "US"),
        ("alpha", "2025-03-09 03:00:00.000", "US"),
        ("alpha", "2025-03-10 01:00:00.000", "FR"),
        ("alpha", "2025-03-10 02:00:00.000", "FR"),
        ("beta", "2025-03-09 10:00:00.000", "DE"),
        ("beta", "2025-03-09 11:00:00.000", "DE"),
        ("beta", "2025-03-10 10:00:00.000", "US"),
    ]
    assert {r["bot"] for r in rows} == {"0"}
    assert rows[0]["ip"] == "203.0.113.0"
    assert rows[0]["browser"] == "Chrome"


@pytest.mark.parametrize(("bots", "count"), [("include", 10), ("only", 2)])
async def test_export_jsonl_follows_the_bot_filter(
    client: Any, world: World, bots: str, count: int
) -> None:
    response = await _export(client, world.auth, format="jsonl", bots=bots)

    assert response.headers["content-type"] == "application/x-ndjson"
    events = [orjson.loads(line) for line in response.text.splitlines()]
    assert len(events) == count
    assert all(list(event) == EXPORT_COLUMNS for event in events)
    if bots == "only":
        assert [(e["code"], e["bot_name"]) for e in events] == [
            ("alpha", "Googlebot"),
            ("beta", "Slackbot"),
        ]


async def test_export_parquet_keeps_the_column_types(client: Any, world: World) -> None:
    response = await _export(client, world.admin, format="parquet", link="gamma")

    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == EXPORT_COLUMNS
    assert str(table.schema.field("ts").type) == "timestamp[ms, tz=UTC]"
    assert str(table.schema.field("visitor").type) == "uint64"
    assert table.column("code").to_pylist() == ["gamma"] * 4
    assert table.column("ts").to_pylist()[-1] == datetime(
        2025, 3, 9, 12, 0, 3, tzinfo=UTC
    )


async def test_export_admin_gets_every_link(client: Any, world: World) -> None:
    response = await _export(client, world.admin, format="jsonl", bots="include")

    codes = [orjson.loads(line)["code"] for line in response.text.splitlines()]
    assert (codes.count("alpha"), codes.count("beta"), codes.count("gamma")) == (
        6, 4, 4,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_export_of_an_empty_range_is_a_valid_empty_file(
    client: Any, world: World, fmt: str
) -> None:
    params = {"from": "2024-01-01", "to": "2024-01-02", "format": fmt}
    response = await client.get(URL, params=params, headers=world.auth)

    assert response.status_code == 200
    if fmt == "csv":
        assert response.text.count("\n") == 1
    elif fmt == "jsonl":
        assert response.content == b""
    else:
        table = pq.read_table(io.BytesIO(response.content))
        assert (table.num_rows, table.column_names) == (0, EXPORT_COLUMNS)


async def test_export_read_to_the_end_frees_the_store_for_others(
    client: Any, world: World
) -> None:
    async with client.stream(
        "GET", URL, params={**RANGE, "format": "jsonl"}, headers=world.auth
    ) as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    stats = await client.get("/api/v1/stats/overview", params=RANGE, headers=world.auth)

    assert body.count(b"\n") == 8
    assert stats.json()["totals"]["clicks"] == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"format": "CSVWithNames"}, "format"),
        ({"bots": "maybe"}, "bots"),
        ({"tz": "Atlantis"}, "tz"),
        ({"from": "2025-13-01"}, "from"),
        ({"group_by": "country"}, "group_by"),
    ],
)
async def test_export_bad_parameters_get_problem_document(
    client: Any, auth: Any, params: dict[str, str], field: str
) -> None:
    response = await client.get(URL, params=params, headers=auth)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == field


async def test_export_needs_analytics_scope(client: Any, app: Any) -> None:
    links_only = await make_key(app, ["links:read"])
    response = await client.get(URL, headers=links_only)

    assert response.status_code == 403
