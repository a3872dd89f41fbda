"""Test the redirect side's group commit and its outage buffer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from boltlink.analytics import AnalyticsStore
from boltlink.asgi import create_app
from boltlink.backends import connect_clickhouse, connect_redis
from boltlink.clicks import Click, decode_entry, stream_names
from boltlink.recorder import ClickRecorder
from boltlink.settings import Secret
from boltlink.store import migrate
from boltlink.workers.run import ROLES, run_role
from tests.own_redis import OwnRedis, free_port

pytestmark = pytest.mark.redis

#: A click timestamp in the range the sinks accept (2023-11-14 UTC).
_T0 = 1_700_000_000_000


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
        clicks = [Click(link_id=1, code="a", ts_ms=_T0 + n) for n in range(50)]
        await asyncio.gather(*(recorder.record(c) for c in clicks))
    finally:
        await recorder.stop()

    entries = await redis_client.xrange(stream)
    assert 1 <= len(entries) < 50
    stored = [c.ts_ms for _, f in entries for c in decode_entry(f)]
    assert sorted(stored) == [_T0 + n for n in range(50)]


async def test_recorder_spreads_clicks_over_partitions(
    redis_client: Any, redis_prefix: str
) -> None:
    streams = stream_names(redis_prefix, 3)
    recorder = ClickRecorder(redis_client, streams, maxlen=10_000, buffer_size=10)
    await recorder.start()
    try:
        for link_id in range(3, 9):
            await recorder.record(Click(link_id=link_id, code="x", ts_ms=_T0))
    finally:
        await recorder.stop()

    for index, stream in enumerate(streams):
        ids = [c.link_id for c in await _stream_clicks(redis_client, stream)]
        assert ids == [index + 3, index + 6]


@pytest.fixture
def own_redis(own_redis_servers: Any) -> OwnRedis:
    """Start a Redis server this test may stop and restart at will."""
    server: OwnRedis = own_redis_servers("--appendonly", "yes")
    return server


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_redirects_survive_redis_outage_and_every_click_counts(
    settings: Any, own_redis: OwnRedis
) -> None:
    settings = dataclasses.replace(settings, redis_url=Secret(own_redis.url))
    migrate(settings.database_dsn, schema=settings.database_schema)
    app = create_app(settings)

    async with app.router.lifespan_context(app):
        link = await _make_link(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get(f"/{link}")).status_code == 302
            # A steady stream of redirects: one second up, five seconds with
            # Redis stopped, one second after it is back.
            answers = asyncio.create_task(_steady_redirects(c, link, 7.0))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_redis.stop)
            await asyncio.sleep(5.0)
            buffered = app.state.runtime.recorder.buffered
            await asyncio.to_thread(own_redis.start)
            statuses = await answers
            await _until_empty(app.state.runtime.recorder)

        store = app.state.runtime.store
        counted = await _count_with_consumers(settings, store, link, len(statuses) + 1)

    assert set(statuses) == {302}
    assert buffered > 100
    assert counted == (len(statuses) + 1, len(statuses) + 1)


async def _steady_redirects(client: Any, code: str, seconds: float) -> list[int]:
    """GET ``code`` every 10 ms for ``seconds``; return every status."""
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses.append((await client.get(f"/{code}")).status_code)
        await asyncio.sleep(0.01)
    return statuses


async def _count_with_consumers(
    settings: Any, store: Any, code: str, expected: int
) -> tuple[int, int]:
    """Run both consumer roles until they hold ``expected`` clicks; return both."""
    stop = asyncio.Event()
    roles = [asyncio.create_task(run_role(r, settings, stop)) for r in ROLES]
    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()
    try:
        link_id = (await store.get_link(code)).id

        async def counts() -> tuple[int, int]:
            clicks = (await store.get_link(code)).clicks
            return clicks, await analytics.count_clicks(link_id)

        deadline = time.monotonic() + 30
        while await counts() != (expected, expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # Settled: nothing more arrives later.
        await asyncio.sleep(0.5)
        return await counts()
    finally:
        stop.set()
        await asyncio.gather(*roles)
        analytics.close()


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


class _ReplyCutter:
    """Forward to Redis, but drop the connection instead of its next replies.

    Redis has applied a command whose reply is lost: the client cannot tell
    it from a command that never arrived.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.cut = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on a free port; return the URL clients should use."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        assert self._server is not None
        self._server.close()
        for task in self._links:
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, client: asyncio.StreamReader, back: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._forward(client, back))
        self._links.add(task)

    async def _forward(
        self, client: asyncio.StreamReader, back: asyncio.StreamWriter
    ) -> None:
        server, to_server = await asyncio.open_connection(*self._target)
        up = asyncio.create_task(self._pipe(client, to_server, cutting=False))
        try:
            await self._pipe(server, back, cutting=True)
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await up
            for writer in (back, to_server):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        cutting: bool,
    ) -> None:
        while data := await reader.read(65536):
            if cutting and self.cut:
                self.cut -= 1
                return
            writer.write(data)
            await writer.drain()


@pytest.mark.parametrize("cut", [1, 3])
async def test_recorder_write_whose_reply_is_lost_counts_once(
    settings: Any, store: Any, redis_client: Any, redis_url: str, cut: int
) -> None:
    from urllib.parse import urlsplit

    from boltlink.models import NewLink
    from boltlink.workers.consumer import StreamConsumer
    from boltlink.workers.sinks import AggregateSink, IngestSink

    target = urlsplit(redis_url)
    proxy = _ReplyCutter(target.hostname or "127.0.0.1", target.port or 6379)
    # The proxy forwards to db 0 only; the test Redis URL names db 0 too.
    proxied = dataclasses.replace(settings, redis_url=Secret(await proxy.start()))
    client = connect_redis(proxied)
    [stream] = stream_names(settings.redis_prefix, 1)
    link = await store.create_link(NewLink(code="lost", url="https://e.com/"))
    recorder = ClickRecorder(
        client, [stream], maxlen=10_000, buffer_size=100, retry_interval=0.05
    )
    await recorder.start()
    try:
        assert await client.ping()
        # One reply lost: redis-py sends the XADD again. Three: the
        # recorder keeps the entry and sends it again later.
        proxy.cut = cut
        clicks = [Click(link_id=link.id, code="lost", ts_ms=_T0 + n) for n in range(5)]
        await asyncio.gather(*(recorder.record(c) for c in clicks))
        await _until_empty(recorder)
    finally:
        await recorder.stop()
        await client.aclose()
        await proxy.close()

    entries = await redis_client.xrange(stream)
    assert len(entries) >= 2
    assert len({fields[b"w"] for _, fields in entries}) == 1
    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()
    try:
        for sink in (AggregateSink(store), IngestSink(analytics)):
            consumer = StreamConsumer(
                redis_client,
                [stream],
                sink=sink,
                consumer="test-0",
                prefix=settings.redis_prefix,
                batch_size=100,
                block_ms=10,
            )
            await consumer.ensure_groups()
            assert await consumer.step() == 0
            assert await consumer.step() == len(entries)
        assert (await store.get_link("lost")).clicks == 5
        assert await analytics.count_clicks(link.id) == 5
    finally:
        analytics.close()


# -- spill files: a buffer kept across a stop --------------------------------------


async def _spill_clicks(tmp_path: Path, stream: str, count: int) -> list[Click]:
    """Record ``count`` clicks with Redis unreachable, then stop: they spill."""
    import redis.asyncio as aioredis

    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2)
    recorder = ClickRecorder(
        dead,
        [stream],
        maxlen=10_000,
        buffer_size=1000,
        retry_interval=0.05,
        spill_dir=tmp_path / "spill",
    )
    await recorder.start()
    clicks = [
        Click(link_id=7, code="sp", ts_ms=_T0 + n, ip="203.0.113.9", user_agent="é")
        for n in range(count)
    ]
    try:
        for click in clicks:
            await recorder.record(click)
        assert recorder.buffered == count
    finally:
        await recorder.stop(timeout=0.2)
        await dead.aclose()
    return clicks


async def test_recorder_stopped_during_an_outage_spills_and_the_next_writes_once(
    tmp_path: Path, redis_client: Any, redis_prefix: str
) -> None:
    [stream] = stream_names(redis_prefix, 1)
    clicks = await _spill_clicks(tmp_path, stream, 25)
    [spilled] = (tmp_path / "spill").iterdir()
    assert spilled.name.endswith(".jsonl")

    for _ in range(2):  # the second start finds nothing left to write
        recorder = ClickRecorder(
            redis_client,
            [stream],
            maxlen=10_000,
            buffer_size=10,
            spill_dir=tmp_path / "spill",
        )
        await recorder.start()
        assert recorder.buffered == 0
        await recorder.stop()

    assert await _stream_clicks(redis_client, stream) == clicks
    assert list((tmp_path / "spill").iterdir()) == []


async def test_recorder_takes_over_a_spill_its_dead_claimant_never_wrote(
    tmp_path: Path, redis_client: Any, redis_prefix: str
) -> None:
    [stream] = stream_names(redis_prefix, 1)
    clicks = await _spill_clicks(tmp_path, stream, 4)
    [spilled] = (tmp_path / "spill").iterdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        # One file taken by a process that died, one by a process still
        # running (which is left alone), plus a line that is not an entry.
        body = spilled.read_bytes()
        spilled.rename(spilled.with_name(f"{spilled.name}.claimed-{gone.pid}"))
        held = tmp_path / "spill" / f"clicks-other-1.jsonl.claimed-{alive.pid}"
        held.write_bytes(body)
        broken = tmp_path / "spill" / "clicks-broken-2.jsonl"
        broken.write_bytes(b'{"p": 0, "w": "x-1", "c": []}\nnot json\n')

        recorder = ClickRecorder(
            redis_client,
            [stream],
            maxlen=10_000,
            buffer_size=10,
            spill_dir=tmp_path / "spill",
        )
        await recorder.start()
        await recorder.stop()

        assert await _stream_clicks(redis_client, stream) == clicks
        assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == [held.name]
    finally:
        alive.kill()
        alive.wait()


async def test_a_click_after_stop_with_no_room_for_its_spill_is_counted_dropped(
    tmp_path: Path, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis
    from prometheus_client import REGISTRY

    def dropped() -> float:
        value = REGISTRY.get_sample_value("boltlink_click_buffer_dropped_total")
        return value or 0.0

    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2)
    spill = tmp_path / "spill"
    recorder = ClickRecorder(
        dead,
        stream_names(redis_prefix, 1),
        maxlen=10_000,
        buffer_size=100,
        retry_interval=0.05,
        spill_dir=spill,
    )
    await recorder.start()
    await recorder.stop(timeout=0.1)
    # The spill folder is gone and a file holds its name: no file can be
    # written there. The redirect still answers, and the click is counted
    # as lost instead of raising.
    shutil.rmtree(spill, ignore_errors=True)
    spill.write_text("not a folder")
    before = dropped()
    try:
        await recorder.record(Click(link_id=7, code="late", ts_ms=_T0))
    finally:
        await dead.aclose()
    assert dropped() - before == 1
    assert recorder.buffered == 0
