"""Test the stats API of a process that reads analytics through the relay.

The app here holds no chDB folder, as a worker of ``boltlink serve`` does
not; a listening socket that never accepts stands in for a holder that is
stopped (SIGSTOP) or stuck, whose connections the kernel still completes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from boltlink.analytics import relay
from boltlink.analytics.relay import relay_address
from boltlink.apikeys import generate_key, hash_key, key_prefix
from boltlink.models import NewLink
from boltlink.settings import Settings

pytestmark = pytest.mark.redis


class _App(NamedTuple):
    """The running app, a client of it, and headers carrying a key."""

    app: Any
    client: httpx.AsyncClient
    headers: dict[str, str]


@pytest.fixture
def stopped_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Listen on the relay address of the app's chDB folder; never answer."""
    monkeypatch.setattr(relay, "ANSWER_TIMEOUT", 0.2)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(relay_address(str(tmp_path / "chdb")))
    listener.listen(8)
    try:
        yield
    finally:
        listener.close()


@pytest.fixture
async def stalling_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    """Answer an export with one chunk, then fall silent, as if stopped."""
    monkeypatch.setattr(relay, "IDLE_TIMEOUT", 0.3)
    stalled = asyncio.Event()

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await relay._read(reader, 1 << 20)
        await relay._write(writer, relay._ACK, b"")
        await relay._write(writer, relay._CHUNK, b"ts,link\n")
        await stalled.wait()
        writer.close()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(relay_address(str(tmp_path / "chdb")))
    server = await asyncio.start_unix_server(answer, sock=sock)
    try:
        yield
    finally:
        stalled.set()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def relayed_app(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[_App]:
    """Yield an app without chDB of its own, a client of it and key headers."""
    from boltlink.asgi import create_app
    from boltlink.store import migrate

    settings = Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'links.sqlite3'}",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
        public_url="https://bl.test",
        inprocess_workers=False,
    )
    migrate(settings.database_dsn, schema="public")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        store = app.state.runtime.store
        raw = generate_key()
        await store.create_key(
            name="tests",
            scopes=["analytics:read"],
            key_hash=hash_key(raw),
            prefix=key_prefix(raw),
        )
        await store.create_link(NewLink(code="relayed", url="https://example.com/"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://bl.test"
        ) as client:
            yield _App(app, client, {"Authorization": f"Bearer {raw}"})


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/links/relayed/stats",
        "/api/v1/stats/overview",
        "/api/v1/analytics/global",
        "/api/v1/analytics/export",
    ],
)
async def test_stats_from_a_stopped_holder_are_a_503_problem(
    relayed_app: _App,
    stopped_holder: None,
    path: str,
) -> None:
    _, client, headers = relayed_app

    response = await client.get(path, headers=headers)

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "backend_unavailable"


async def test_redirects_work_while_the_holder_is_stopped(
    relayed_app: _App, stopped_holder: None
) -> None:
    _, client, _ = relayed_app

    response = await client.get("/relayed")

    assert response.status_code == 302
    assert response.headers["location"] == "https://example.com/"


async def test_export_that_stalls_midway_ends_without_its_last_chunk(
    relayed_app: _App,
    stalling_holder: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _, headers = relayed_app
    # Straight to the app: a test client would take a body that stops early
    # for a whole one; the server needs the missing end to cut the transfer.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/api/v1/analytics/export",
        "raw_path": b"/api/v1/analytics/export",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bl.test"),
            (b"authorization", headers["Authorization"].encode()),
        ],
        "client": ("198.51.100.7", 40000),
        "server": ("bl.test", 443),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.WARNING, "boltlink.api"):
        await app(scope, receive, send)

    assert [(m["type"], m.get("status"), m.get("more_body")) for m in sent] == [
        ("http.response.start", 200, None),
        ("http.response.body", None, True),
    ]
    assert sent[1]["body"] == b"ts,link\n"
    assert [r.getMessage() for r in caplog.records] == [
        "analytics export cut short: the process holding chDB sent nothing within 0.3 s"
    ]
