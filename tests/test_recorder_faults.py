"""Break the recorder's write path with real Redis servers and count every click.

Each test starts redis-server processes of its own on free loopback ports
and kills, pauses, fills or disconnects them while many redirects record
clicks at once. The promise checked at the end of each: every click whose
``record()`` returned is in the streams exactly once, counting entries by
their write id as the sinks do, or in the recorder's buffer or spill file;
no exception escapes ``record()``; the loop reports no unretrieved future
or destroyed task; no socket is left open.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import subprocess
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop

from boltlink.clicks import Click, decode_entry, stream_names
from boltlink.recorder import ClickRecorder
from tests.own_redis import OwnRedis, free_port

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

#: A click timestamp in the range the sinks accept (2023-11-14 UTC).
_T0 = 1_700_000_000_000

LOOPS = ["asyncio", "uvloop"]


# -- running a scenario and counting its clicks -------------------------------------


def _run(loop: str, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` on a fresh loop; fail on loop errors or open sockets."""
    problems: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: problems.append(str(context.get("message")))
        )
        try:
            await scenario()
        finally:
            # Futures and transports dropped by the scenario report now,
            # while the loop and its handler are still there.
            gc.collect()
            await asyncio.sleep(0.05)
            gc.collect()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if loop == "uvloop":
            uvloop.run(main())
        else:
            asyncio.run(main())
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert problems == []
    assert leaks == []


class _Load:
    """Redirects recording clicks, each click unique, until told to stop."""

    def __init__(self, recorder: ClickRecorder, *, links: int = 1) -> None:
        self.recorder = recorder
        self.links = links
        self.returned: list[Click] = []
        self.errors: list[BaseException] = []
        self._numbers = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def click(self) -> Click:
        n = next(self._numbers)
        return Click(link_id=1 + n % self.links, code="f", ts_ms=_T0 + n)

    async def burst(self, count: int) -> None:
        """Record ``count`` clicks at once (one event-loop turn)."""
        await asyncio.gather(*(self._one(self.click()) for _ in range(count)))

    def start(self, clients: int, pause: float = 0.001) -> None:
        """Start ``clients`` redirect loops, each one click after another."""
        for _ in range(clients):
            self._tasks.append(asyncio.create_task(self._client(pause)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def _client(self, pause: float) -> None:
        while not self._stop.is_set():
            await self._one(self.click())
            await asyncio.sleep(pause)

    async def _one(self, click: Click) -> None:
        try:
            await self.recorder.record(click)
        except BaseException as exc:  # nothing may escape record()
            self.errors.append(exc)
            return
        self.returned.append(click)


async def _stream_counts(url: str, streams: list[str]) -> collections.Counter[Click]:
    """Count each click in ``streams``, an entry counted once per write id."""
    client = aioredis.Redis.from_url(url)
    counts: collections.Counter[Click] = collections.Counter()
    try:
        for stream in streams:
            seen: dict[bytes, list[Click]] = {}
            for _, fields in await client.xrange(stream):
                clicks = decode_entry(fields)
                write_id = fields[b"w"]
                if write_id in seen:
                    # A copy sent again: the same clicks, or fewer of them.
                    assert clicks == seen[write_id][: len(clicks)]
                    continue
                seen[write_id] = clicks
                counts.update(clicks)
    finally:
        await client.aclose()
    return counts


def _buffered(recorder: ClickRecorder) -> list[Click]:
    kept = [c for entry in recorder._unsure for c in entry.clicks]
    return kept + list(recorder._unsent)


async def _drain_spill(url: str, streams: list[str], spill: Path) -> None:
    """Start a recorder on ``spill`` with Redis up: it writes the spilled clicks."""
    client = aioredis.Redis.from_url(url)
    recorder = ClickRecorder(
        client, streams, maxlen=1_000_000, buffer_size=1_000_000, spill_dir=spill
    )
    try:
        await recorder.start()
        assert recorder.buffered == 0
        await recorder.stop(timeout=2)
    finally:
        await client.aclose()
    assert not spill.is_dir() or list(spill.iterdir()) == []


def _assert_exactly_once(
    returned: list[Click], counts: collections.Counter[Click]
) -> None:
    assert len(set(returned)) == len(returned)
    missing = [c for c in returned if counts[c] == 0]
    twice = {c: n for c, n in counts.items() if n > 1}
    assert (len(missing), len(twice)) == (0, 0)


def _recorder(client: Any, streams: list[str], spill: Path | None) -> ClickRecorder:
    return ClickRecorder(
        client,
        streams,
        maxlen=1_000_000,
        buffer_size=1_000_000,
        retry_interval=0.05,
        spill_dir=spill,
    )


def _client(url: str, **options: Any) -> Any:
    """Return a client configured as ``connect_redis`` configures the app's."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))
    options.setdefault("socket_timeout", 2.0)
    options.setdefault("socket_connect_timeout", 1.0)
    return aioredis.Redis.from_url(url, **options)


# -- Redis killed and started again ---------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_redis_killed_and_restarted_under_load_loses_and_doubles_nothing(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    # Every acknowledged write survives the SIGKILL (fsync before reply), so
    # a click missing afterwards is the recorder's.
    server = own_redis_servers("--appendonly", "yes", "--appendfsync", "always")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 2)
    spill = tmp_path / "spill"
    figures: dict[str, int] = {}

    async def scenario() -> None:
        client = _client(url)
        recorder = _recorder(client, streams, spill)
        await recorder.start()
        load = _Load(recorder, links=7)
        try:
            load.start(clients=50)
            await asyncio.sleep(0.5)
            written_before = len(load.returned)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.5)
            figures["buffered_in_outage"] = recorder.buffered
            await asyncio.to_thread(server.start)
            await asyncio.sleep(1.0)
            await load.stop()
            figures["before"] = written_before
            started = time.monotonic()
            await recorder.stop(timeout=3)
            figures["stop_ms"] = int((time.monotonic() - started) * 1000)
            figures["left"] = recorder.buffered
        finally:
            await client.aclose()
        await _drain_spill(url, streams, spill)
        counts = await _stream_counts(url, streams)
        assert load.errors == []
        _assert_exactly_once(load.returned, counts)
        figures["returned"] = len(load.returned)

    _run(loop, scenario)
    print(figures)
    assert figures["buffered_in_outage"] > 0
    assert figures["left"] == 0
    assert figures["stop_ms"] < 3500


async def _under_load(
    url: str,
    streams: list[str],
    spill: Path,
    fault: Callable[[ClickRecorder], Awaitable[None]],
    figures: dict[str, int],
    *,
    clients: int = 50,
    stop_timeout: float = 3.0,
    **options: Any,
) -> None:
    """Record under load through ``fault``, stop, write any spill; count."""
    client = _client(url, **options)
    recorder = _recorder(client, streams, spill)
    await recorder.start()
    load = _Load(recorder, links=7)
    try:
        load.start(clients=clients)
        await asyncio.sleep(0.3)
        await fault(recorder)
        await asyncio.sleep(0.3)
        await load.stop()
        started = time.monotonic()
        await recorder.stop(timeout=stop_timeout)
        figures["stop_ms"] = int((time.monotonic() - started) * 1000)
        figures["left"] = recorder.buffered
    finally:
        await client.aclose()
    await _drain_spill(url, streams, spill)
    counts = await _stream_counts(url, streams)
    figures["returned"] = len(load.returned)
    figures["stream_clicks"] = sum(counts.values())
    assert load.errors == []
    _assert_exactly_once(load.returned, counts)


# -- Redis paused: replies overdue ------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_redis_paused_past_the_timeout_then_resumed_counts_each_click_once(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "no")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 2)
    figures: dict[str, int] = {}

    async def fault(recorder: ClickRecorder) -> None:
        server.pause()
        await asyncio.sleep(2.6)  # the link's timeout is 2 s
        figures["buffered_paused"] = recorder.buffered
        server.resume()
        await asyncio.sleep(1.0)
        figures["buffered_after"] = recorder.buffered

    _run(loop, lambda: _under_load(url, streams, tmp_path / "spill", fault, figures))
    print(figures)
    assert figures["buffered_paused"] > 0
    assert figures["buffered_after"] == 0
    assert figures["left"] == 0


# -- the recorder's connection killed by Redis --------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_client_kill_of_the_link_under_load_counts_each_click_once(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "no")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 3)
    figures: dict[str, int] = {}

    async def fault(recorder: ClickRecorder) -> None:
        admin = aioredis.Redis.from_url(url)
        killed = 0
        try:
            for _ in range(20):
                killed += await admin.execute_command(
                    "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
                )
                await asyncio.sleep(0.05)
        finally:
            await admin.aclose()
        figures["killed"] = killed
        await asyncio.sleep(0.5)
        figures["buffered_after"] = recorder.buffered

    _run(loop, lambda: _under_load(url, streams, tmp_path / "spill", fault, figures))
    print(figures)
    assert figures["killed"] >= 10
    assert figures["buffered_after"] == 0


# -- Redis out of memory: error replies ------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_oom_error_replies_then_memory_freed_counts_each_click_once(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "no", "--maxmemory-policy", "noeviction")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 2)
    figures: dict[str, int] = {}

    async def fault(recorder: ClickRecorder) -> None:
        admin = aioredis.Redis.from_url(url)
        try:
            used = (await admin.info("memory"))["used_memory"]
            await admin.config_set("maxmemory", str(used + 200_000))
            for _ in range(100):
                if recorder.buffered:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            figures["buffered_oom"] = recorder.buffered
            await admin.config_set("maxmemory", "0")
            await asyncio.sleep(1.0)
            figures["buffered_after"] = recorder.buffered
        finally:
            await admin.aclose()

    _run(loop, lambda: _under_load(url, streams, tmp_path / "spill", fault, figures))
    print(figures)
    assert figures["buffered_oom"] > 0
    assert figures["buffered_after"] == 0


# -- AUTH and a database other than 0 ---------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_password_and_database_hold_across_a_restart(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers(
        "--appendonly", "yes", "--appendfsync", "always", "--requirepass", "s3cr:t"
    )
    url = f"redis://:s3cr%3At@127.0.0.1:{server.port}/5"
    streams = stream_names("faults:", 1)
    figures: dict[str, int] = {}

    async def fault(recorder: ClickRecorder) -> None:
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.3)
        figures["buffered_down"] = recorder.buffered
        await asyncio.to_thread(server.start)
        await asyncio.sleep(1.0)
        figures["buffered_after"] = recorder.buffered

    async def scenario() -> None:
        await _under_load(url, streams, tmp_path / "spill", fault, figures)
        admin = aioredis.Redis.from_url(url.rsplit("/", 1)[0] + "/0")
        try:
            figures["db0_keys"] = await admin.dbsize()
        finally:
            await admin.aclose()

    _run(loop, scenario)
    print(figures)
    assert figures["buffered_down"] > 0
    assert figures["buffered_after"] == 0
    assert figures["db0_keys"] == 0


# -- stopped while writes are in flight or Redis is away ---------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("fault", ["pause", "pause-long", "kill"])
def test_stop_while_writes_hang_or_redis_is_down_spills_every_click(
    loop: str, fault: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "yes", "--appendfsync", "always")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 2)
    spill = tmp_path / "spill"
    figures: dict[str, int] = {}

    async def scenario() -> None:
        client = _client(url)
        recorder = _recorder(client, streams, spill)
        await recorder.start()
        load = _Load(recorder, links=5)
        try:
            load.start(clients=40)
            await asyncio.sleep(0.3)
            if fault.startswith("pause"):
                server.pause()
            else:
                await asyncio.to_thread(server.kill)
            # Long enough for the link's 2 s timeout: the writer is then
            # stuck in the handshake of a new connection (socket_timeout 2 s).
            await asyncio.sleep(2.3 if fault == "pause-long" else 0.3)
            figures["in_flight"] = recorder._link.in_flight
            # Redirects keep coming until the recorder has stopped.
            started = time.monotonic()
            await recorder.stop(timeout=0.5)
            figures["stop_ms"] = int((time.monotonic() - started) * 1000)
            load._stop.set()
            await load.stop()
            figures["left"] = recorder.buffered
        finally:
            await client.aclose()
        if fault.startswith("pause"):
            server.resume()
        else:
            await asyncio.to_thread(server.start)
        figures["spilled"] = sum(
            len(line) > 0
            for path in spill.iterdir()
            for line in path.read_bytes().splitlines()
        )
        await _drain_spill(url, streams, spill)
        counts = await _stream_counts(url, streams)
        figures["returned"] = len(load.returned)
        figures["missing"] = sum(counts[c] == 0 for c in load.returned)
        print(figures)
        assert load.errors == []
        _assert_exactly_once(load.returned, counts)

    _run(loop, scenario)
    assert figures["spilled"] > 0
    assert 450 <= figures["stop_ms"] < 1000


@pytest.mark.parametrize("loop", LOOPS)
def test_clicks_recorded_while_and_after_the_recorder_stops_are_spilled(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "no")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 2)
    spill = tmp_path / "spill"
    figures: dict[str, int] = {}

    async def scenario() -> None:
        # Nothing listens on the recorder's port: every click is buffered.
        dead = _client(f"redis://127.0.0.1:{free_port()}/0")
        recorder = _recorder(dead, streams, spill)
        await recorder.start()
        load = _Load(recorder, links=3)
        try:
            await load.burst(100)
            stopping = asyncio.create_task(recorder.stop(timeout=0.2))
            # Redirects of every turn while stop() runs, its spill included.
            while not stopping.done():
                await load.burst(10)
            await stopping
            figures["during"] = len(load.returned) - 100
            await load.burst(7)  # a redirect served after stop()
            figures["left"] = recorder.buffered
        finally:
            await dead.aclose()
        figures["files"] = len(list(spill.iterdir()))
        await _drain_spill(url, streams, spill)
        counts = await _stream_counts(url, streams)
        figures["returned"] = len(load.returned)
        figures["missing"] = sum(counts[c] == 0 for c in load.returned)
        assert load.errors == []
        _assert_exactly_once(load.returned, counts)

    _run(loop, scenario)
    print(figures)
    assert figures["during"] > 10
    assert figures["left"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_a_full_buffer_drops_exactly_the_clicks_it_counts(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    from boltlink.recorder import BUFFER_DROPPED

    server = own_redis_servers("--appendonly", "yes", "--appendfsync", "always")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 3)
    figures: dict[str, int] = {}

    async def scenario() -> None:
        client = _client(url)
        recorder = ClickRecorder(
            client, streams, maxlen=1_000_000, buffer_size=500, retry_interval=0.05
        )
        await recorder.start()
        load = _Load(recorder, links=11)
        dropped_before = BUFFER_DROPPED._value.get()
        try:
            load.start(clients=30)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.3)
            figures["buffered_down"] = recorder.buffered
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.8)
            await load.stop()
            await recorder.stop(timeout=2)
            figures["left"] = recorder.buffered
        finally:
            await client.aclose()
        figures["dropped"] = int(BUFFER_DROPPED._value.get() - dropped_before)
        counts = await _stream_counts(url, streams)
        figures["missing"] = sum(counts[c] == 0 for c in load.returned)
        figures["twice"] = sum(n > 1 for n in counts.values())
        assert load.errors == []

    _run(loop, scenario)
    print(figures)
    assert figures["buffered_down"] == 500
    assert figures["left"] == 0
    assert figures["dropped"] > 0
    assert (figures["missing"], figures["twice"]) == (figures["dropped"], 0)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_under_load_with_redis_up_counts_each_click_once(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "no")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 3)
    spill = tmp_path / "spill"
    figures: dict[str, int] = {}

    async def scenario() -> None:
        client = _client(url)
        recorder = _recorder(client, streams, spill)
        await recorder.start()
        load = _Load(recorder, links=13)
        try:
            load.start(clients=60)
            await asyncio.sleep(0.5)
            # Batches in flight as stop() begins: those still unanswered when
            # it closes the link may have been applied, and are spilled.
            started = time.monotonic()
            await recorder.stop(timeout=0.3)
            figures["stop_ms"] = int((time.monotonic() - started) * 1000)
            load._stop.set()
            await load.stop()
        finally:
            await client.aclose()
        spilled = list(spill.iterdir()) if spill.is_dir() else []
        figures["files"] = len(spilled)
        await _drain_spill(url, streams, spill)
        counts = await _stream_counts(url, streams)
        figures["returned"] = len(load.returned)
        figures["stream_clicks"] = sum(counts.values())
        figures["missing"] = sum(counts[c] == 0 for c in load.returned)
        print(figures)
        assert load.errors == []
        _assert_exactly_once(load.returned, counts)

    _run(loop, scenario)
    assert figures["stop_ms"] < 800


@pytest.mark.parametrize("loop", LOOPS)
def test_a_spilled_buffer_is_written_in_entries_of_a_chunk(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    import orjson

    server = own_redis_servers("--appendonly", "no")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 1)
    spill = tmp_path / "spill"
    figures: dict[str, Any] = {}

    async def scenario() -> None:
        dead = _client(f"redis://127.0.0.1:{free_port()}/0")
        recorder = _recorder(dead, streams, spill)
        await recorder.start()
        load = _Load(recorder)
        try:
            await load.burst(2500)
            await recorder.stop(timeout=0.1)
        finally:
            await dead.aclose()
        [path] = spill.iterdir()
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        figures["spilled"] = [len(line["c"]) for line in lines]
        await _drain_spill(url, streams, spill)
        client = aioredis.Redis.from_url(url)
        try:
            figures["entries"] = [
                len(decode_entry(f)) for _, f in await client.xrange(streams[0])
            ]
        finally:
            await client.aclose()
        _assert_exactly_once(load.returned, await _stream_counts(url, streams))

    _run(loop, scenario)
    # Never sent (the link never opened): packed a chunk at a time.
    assert figures == {"spilled": [1000, 1000, 500], "entries": [1000, 1000, 500]}


@pytest.mark.parametrize("loop", LOOPS)
def test_redis_flapping_while_the_buffer_drains_counts_each_click_once(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    server = own_redis_servers("--appendonly", "yes", "--appendfsync", "always")
    url = f"redis://127.0.0.1:{server.port}/0"
    streams = stream_names("faults:", 4)
    figures: dict[str, int] = {"max_buffered": 0}

    async def fault(recorder: ClickRecorder) -> None:
        # Killed again while the buffer of the last outage is being written,
        # and once while paused (writes overdue on a dead process).
        for cycle in range(4):
            if cycle == 2:
                server.pause()
                await asyncio.sleep(0.2)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.2)
            figures["max_buffered"] = max(figures["max_buffered"], recorder.buffered)
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        figures["buffered_after"] = recorder.buffered

    _run(loop, lambda: _under_load(url, streams, tmp_path / "spill", fault, figures))
    print(figures)
    assert figures["max_buffered"] > 0
    assert figures["buffered_after"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_a_unix_socket_link_reconnects_after_client_kill(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    path = tmp_path / "r.sock"
    server = own_redis_servers("--appendonly", "no", "--unixsocket", str(path))
    url = f"unix://{path}?db=2"
    streams = stream_names("faults:", 2)
    figures: dict[str, int] = {}

    async def fault(recorder: ClickRecorder) -> None:
        admin = aioredis.Redis(port=server.port)
        try:
            for _ in range(5):
                await admin.execute_command(
                    "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
                )
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            figures["buffered_after"] = recorder.buffered
            figures["db2_keys"] = int(
                (await admin.info("keyspace")).get("db2", {}).get("keys", 0)
            )
        finally:
            await admin.aclose()

    _run(loop, lambda: _under_load(url, streams, tmp_path / "spill", fault, figures))
    print(figures)
    assert figures["buffered_after"] == 0
    assert figures["db2_keys"] == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tls_link_survives_client_kill_and_a_pause(
    loop: str, own_redis_servers: Callable[..., OwnRedis], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"]
    command += ["-days", "1", "-keyout", str(key), "-out", str(cert)]
    made = subprocess.run(
        [*command, "-subj", "/CN=127.0.0.1"],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip("openssl cannot make a certificate")
    tls_port = free_port()
    server = own_redis_servers(
        "--appendonly", "no", "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{tls_port}/1?ssl_cert_reqs=none"
    streams = stream_names("faults:", 2)
    figures: dict[str, int] = {}

    async def fault(recorder: ClickRecorder) -> None:
        admin = aioredis.Redis(port=server.port)
        try:
            for _ in range(5):
                await admin.execute_command(
                    "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
                )
                await asyncio.sleep(0.1)
            server.pause()
            await asyncio.sleep(2.3)
            figures["buffered_paused"] = recorder.buffered
            server.resume()
            await asyncio.sleep(1.0)
            figures["buffered_after"] = recorder.buffered
            figures["db1_keys"] = int(
                (await admin.info("keyspace")).get("db1", {}).get("keys", 0)
            )
        finally:
            await admin.aclose()

    _run(loop, lambda: _under_load(url, streams, tmp_path / "spill", fault, figures))
    print(figures)
    assert figures["buffered_paused"] > 0
    assert figures["buffered_after"] == 0
    assert figures["db1_keys"] == 2
