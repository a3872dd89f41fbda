"""Test the analytics relay against a real chDB store behind a real socket.

A holder that is stopped (SIGSTOP) or stuck still has its connections
completed by the kernel from the listen backlog; a listening socket that
never accepts stands in for it, and a small server that answers by hand
for one that stops half-way through an export.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from boltlink import analytics
from boltlink.analytics import relay
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


# -- a holder that does not answer ------------------------------------------------


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the relay's timeouts so a silent holder fails a test quickly."""
    monkeypatch.setattr(relay, "ANSWER_TIMEOUT", 0.2)
    monkeypatch.setattr(relay, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(relay, "HEARTBEAT_INTERVAL", 0.05)


@pytest.fixture
def silent_holder(tmp_path: Path, short_timeouts: None) -> Iterator[str]:
    """Yield the relay address of a holder that connects but never answers."""
    address = relay_address(str(tmp_path / "chdb"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(8)
    try:
        yield address
    finally:
        listener.close()


@pytest.mark.parametrize("call", ["query", "ping", "ping_holder"])
async def test_relay_call_to_a_silent_holder_is_unavailable(
    silent_holder: str, call: str
) -> None:
    remote = RelayedStore(silent_holder)
    calls = {
        "query": lambda: remote.query("SELECT 1", {}),
        "ping": remote.ping,
        "ping_holder": remote.ping_holder,
    }

    with pytest.raises(
        BackendUnavailable,
        match=r"^the process holding chDB did not answer within 0\.2 s$",
    ):
        await calls[call]()


async def test_relay_export_from_a_silent_holder_is_unavailable(
    silent_holder: str,
) -> None:
    stream = RelayedStore(silent_holder).export("csv", "SELECT 1", {})

    with pytest.raises(BackendUnavailable, match=r"did not answer within 0\.2 s$"):
        await stream.start()


async def test_relay_export_that_stalls_midway_ends(
    tmp_path: Path, short_timeouts: None
) -> None:
    address = relay_address(str(tmp_path / "chdb"))
    stalled = asyncio.Event()

    async def first_chunk_then_silence(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await relay._read(reader, 1 << 20)
        await relay._write(writer, relay._ACK, b"")
        await relay._write(writer, relay._CHUNK, b"n\n0\n")
        await stalled.wait()
        writer.close()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
    server = await asyncio.start_unix_server(first_chunk_then_silence, sock=sock)
    try:
        stream = RelayedStore(address).export("csv", "SELECT 1", {})
        await stream.start()
        received = []
        with pytest.raises(BackendUnavailable, match=r"sent nothing within 0\.3 s$"):
            async for chunk in stream.chunks():
                received.append(chunk)
    finally:
        stalled.set()
        server.close()
        await server.wait_closed()

    assert received == [b"n\n0\n"]


# -- a holder that is busy ---------------------------------------------------------

# About one second of work in chDB, longer than the shortened idle timeout:
# only the heartbeats keep the client waiting.
_SLOW = "SELECT number AS n, sleepEachRow(0.1) AS s FROM numbers(10)"


async def test_relay_query_longer_than_the_idle_timeout_answers(
    relayed: tuple[Any, RelayedStore], short_timeouts: None
) -> None:
    _, remote = relayed

    rows = await remote.query(_SLOW, {})

    assert [row[0] for row in rows] == list(range(10))


async def test_relay_export_slower_than_the_idle_timeout_streams(
    relayed: tuple[Any, RelayedStore], short_timeouts: None
) -> None:
    _, remote = relayed

    stream = remote.export("jsonl", _SLOW, {})
    await stream.start()
    body = b"".join([chunk async for chunk in stream.chunks()])

    assert body == b"".join(b'{"n":%d,"s":0}\n' % n for n in range(10))


async def test_relay_holder_ping_answers_while_an_export_holds_chdb(
    relayed: tuple[Any, RelayedStore], short_timeouts: None
) -> None:
    _, remote = relayed
    stream = remote.export("jsonl", _SLOW, {})
    started = asyncio.ensure_future(stream.start())
    await asyncio.sleep(0.2)

    await asyncio.wait_for(remote.ping_holder(), 0.2)

    await started
    await stream.aclose()
