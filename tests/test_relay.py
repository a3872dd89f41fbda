"""Test the analytics relay against a real chDB store behind a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from boltlink import analytics
from boltlink.analytics.relay import RelayedStore, RelayServer, relay_address
from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings


@pytest.fixture
async def relayed(tmp_path: Path) -> AsyncIterator[tuple[Any, RelayedStore]]:
    """Yield a chDB store and a relayed view of it through a live server."""
    folder = tmp_path / "chdb"
    settings = Settings.from_env(
        {}, data_dir=tmp_path, clickhouse_url=f"chdb://{folder}"
    )
    store = analytics.acquire(settings)
    address = relay_address(str(folder))
    server = RelayServer(store, address)
    await server.start()
    try:
        yield store, RelayedStore(address)
    finally:
        await server.close()
        analytics.release(store)


async def test_relay_query_returns_the_rows_and_types_of_the_store(
    relayed: tuple[Any, RelayedStore],
) -> None:
    store, remote = relayed
    sql = (
        "SELECT number, toString(number), toDate('2025-03-09') + number, "
        "toDateTime64('2025-03-09 06:59:59.250', 3, 'UTC') + number "
        "FROM numbers({n:UInt32})"
    )
    params = {"n": 3, "since": datetime(2025, 3, 9, tzinfo=UTC)}

    rows = await remote.query(sql, params)

    assert rows == await store.query(sql, params)
    assert rows[2][2] == date(2025, 3, 11)
    assert rows[1][3] == datetime(2025, 3, 9, 7, 0, 0, 250000)


async def test_relay_export_streams_the_same_bytes(
    relayed: tuple[Any, RelayedStore],
) -> None:
    store, remote = relayed
    sql = "SELECT number AS n, toString(number) AS s FROM numbers({n:UInt32})"
    params = {"n": 200_000}

    bodies = []
    for source in (store, remote):
        stream = source.export("jsonl", sql, params)
        await stream.start()
        bodies.append(b"".join([chunk async for chunk in stream.chunks()]))

    assert bodies[1] == bodies[0]
    assert bodies[1].count(b"\n") == 200_000
    assert bodies[1].startswith(b'{"n":0,"s":"0"}\n')


async def test_relay_passes_query_errors_on(relayed: tuple[Any, RelayedStore]) -> None:
    _, remote = relayed

    with pytest.raises(BackendUnavailable, match=r"clickhouse call failed: .*no_such"):
        await remote.query("SELECT * FROM no_such_table", {})
    assert await remote.query("SELECT 1", {}) == [(1,)]


async def test_relay_without_a_holder_is_unavailable(tmp_path: Path) -> None:
    remote = RelayedStore(relay_address(str(tmp_path / "chdb")))

    with pytest.raises(
        BackendUnavailable, match="served by the process running ingest"
    ):
        await remote.ping()
