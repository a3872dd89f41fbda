"""Kill the consumers again and again under load: every click still counts once.

Real processes over real HTTP: one ``boltlink serve`` answers 20,000
redirects over 200 links while two ``boltlink aggregate`` processes and one
``boltlink ingest --consumers 2`` process on chDB are SIGKILLed at random
moments and restarted. At the end each link's counter in the link store and
its row count in ClickHouse both equal the number of ``302`` answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from boltlink.clicks import Click, encode_clicks, stream_names
from boltlink.deadletters import dead_letter_stream

POSTGRES_URL = os.environ.get("BOLTLINK_TEST_DATABASE_URL", "")
pytestmark = [pytest.mark.slow, pytest.mark.redis]

LINKS = 200
CLICKS = 20_000
KILLS = 12
CONCURRENCY = 32
SEED = 20_261_203

# Settings of every process. Entries of a killed consumer are taken over
# after one idle second, so the test does not wait out the 30 s default.
# Deliveries are capped high: the test kills processes far more often than
# any deployment would, and a dead letter would hide a click from the count
# (dead letters have tests of their own).
_COMMON = {
    "inprocess_workers": "false",
    "access_log": "false",
    "stream_partitions": "2",
    "batch_size": "200",
    "ingest_batch_size": "200",
    "block_ms": "200",
    "claim_idle_ms": "1000",
    "claim_interval": "0.5",
    "max_deliveries": "100",
    "shutdown_timeout": "5",
    "trim_interval": "1",
}


# -- processes --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}
    env.update({f"BOLTLINK_{k.upper()}": v for k, v in settings.items()})
    return env


def _run(cwd: Path, settings: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "boltlink", *args],
        cwd=cwd,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class _Role:
    """One consumer process the test kills and starts again."""

    name: str
    args: tuple[str, ...]
    process: subprocess.Popen[bytes] = field(init=False)
    lives: int = 0


@dataclass
class _Fleet:
    """Start, kill and stop the processes of one test."""

    cwd: Path
    settings: dict[str, str]
    roles: dict[str, _Role] = field(default_factory=dict)
    serve: subprocess.Popen[bytes] | None = None

    def start(self, role: _Role) -> None:
        """Start (again) the process of ``role``, its output in a log of its own."""
        role.lives += 1
        log = self.cwd / f"{role.name}.{role.lives}.log"
        with log.open("wb") as out:
            role.process = subprocess.Popen(
                [sys.executable, "-m", "boltlink", *role.args],
                cwd=self.cwd,
                env=_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.roles[role.name] = role

    def kill(self, role: _Role) -> None:
        """SIGKILL the process of ``role`` (if it runs) and reap it."""
        if role.process.poll() is None:
            role.process.send_signal(signal.SIGKILL)
        role.process.wait(10)

    def running(self) -> list[_Role]:
        """Return the roles whose process runs, in a stable order."""
        return [r for _, r in sorted(self.roles.items()) if r.process.poll() is None]

    def stop(self, process: subprocess.Popen[bytes] | None) -> int | None:
        """SIGTERM ``process``, SIGKILL it after 20 s; return its exit code."""
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None

    def stop_all(self) -> None:
        """Stop every process still running."""
        for role in self.roles.values():
            self.stop(role.process)
        self.stop(self.serve)

    def log(self, name: str) -> str:
        """Return the tail of every log of ``name``, for failure messages."""
        logs = sorted(self.cwd.glob(f"{name}*.log"))
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in logs[-3:])


def _serve(fleet: _Fleet) -> str:
    port = _free_port()
    log = fleet.cwd / "serve.log"
    with log.open("wb") as out:
        fleet.serve = subprocess.Popen(
            [sys.executable, "-m", "boltlink", "serve", "--port", str(port)],
            cwd=fleet.cwd,
            env=_env(fleet.settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert fleet.serve.poll() is None, fleet.log("serve")
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"serve not healthy:\n{fleet.log('serve')}")


# -- load and chaos ---------------------------------------------------------------


def _create_links(base: str, key: str) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    codes = []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as api:
        for n in range(LINKS):
            body = {"url": f"https://example.com/kill/{n}"}
            response = api.post("/api/v1/links", json=body)
            assert response.status_code == 201, response.text
            codes.append(str(response.json()["code"]))
    return codes


class _Load:
    """Send GETs for every code of a plan over CONCURRENCY connections.

    A few lines of HTTP/1.1 over asyncio streams rather than httpx: on two
    shared cores httpx's own overhead would bound the load, not the server.
    """

    def __init__(self, base: str, plan: list[str]) -> None:
        self.port = int(base.rsplit(":", 1)[1])
        self.plan = plan
        self.answered: Counter[str] = Counter()
        self.done = 0

    async def run(self) -> None:
        """Send the whole plan; fail on any answer but 302."""
        queue = iter(self.plan)
        await asyncio.gather(*(self._connection(queue) for _ in range(CONCURRENCY)))

    async def _connection(self, queue: Iterator[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            for code in queue:
                request = f"GET /{code} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                writer.write(request.encode())
                status = await asyncio.wait_for(_response_status(reader), 30)
                assert status == 302, f"GET /{code} answered {status}"
                self.answered[code] += 1
                self.done += 1
        finally:
            writer.close()


async def _response_status(reader: asyncio.StreamReader) -> int:
    """Read one response with a Content-Length; return its status code."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1])


async def _chaos(
    fleet: _Fleet, rng: random.Random, load: _Load, sending: asyncio.Task[None]
) -> list[int]:
    """SIGKILL a random running consumer process at KILLS random points of the load.

    Return how many clicks had been answered at each kill.
    """
    moments = sorted(rng.sample(range(CLICKS // 20, CLICKS - CLICKS // 20), KILLS))
    kills: list[int] = []
    restarts: list[asyncio.Task[None]] = []
    for moment in moments:
        while load.done < moment and not sending.done():
            await asyncio.sleep(0.01)
        while not (running := fleet.running()):
            await asyncio.sleep(0.05)
        role = rng.choice(running)
        fleet.kill(role)
        kills.append(load.done)
        # Mostly at once; sometimes late enough for the others to reclaim.
        delay = rng.choice([0.0, 0.0, 0.0, 1.5])
        restarts.append(asyncio.create_task(_restart(fleet, role, delay)))
    await asyncio.gather(*restarts)
    return kills


async def _restart(fleet: _Fleet, role: _Role, delay: float) -> None:
    await asyncio.sleep(delay)
    fleet.start(role)


# -- reading the outcome ----------------------------------------------------------


def _settled(client: redis.Redis, streams: list[str], groups: tuple[str, ...]) -> bool:
    """Tell whether ``groups`` acknowledged every entry of every partition."""
    for stream in streams:
        last = client.xinfo_stream(stream)["last-generated-id"]
        info = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
        for name in groups:
            group = info.get(name)
            if group is None or group["pending"] or group["last-delivered-id"] != last:
                return False
    return True


def _wait_settled(
    fleet: _Fleet,
    client: redis.Redis,
    streams: list[str],
    groups: tuple[str, ...] = ("aggregate", "ingest"),
) -> None:
    deadline = time.monotonic() + 60
    while not _settled(client, streams, groups):
        if time.monotonic() > deadline:
            logs = "\n".join(fleet.log(name) for name in fleet.roles)
            pytest.fail(f"consumers did not catch up:\n{logs}")
        time.sleep(0.2)


def _store_counts(settings: dict[str, str]) -> dict[int, tuple[str, int]]:
    """Return each link's code and counter, read from the link store itself."""
    dsn = settings["database_url"]
    sql = "SELECT id, code, clicks FROM links"
    if dsn.startswith("sqlite:"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        import psycopg

        with psycopg.connect(dsn) as conn:
            conn.execute(f"SET search_path TO {settings['database_schema']}")
            rows = conn.execute(sql).fetchall()
    return {int(i): (str(code), int(clicks)) for i, code, clicks in rows}


_READ_CLICKHOUSE = """
import json, sys
from boltlink.backends import connect_clickhouse
from boltlink.settings import Settings
client = connect_clickhouse(Settings.from_env({}, clickhouse_url=sys.argv[1]))
final = client.query("SELECT link_id, count() FROM clicks FINAL GROUP BY link_id")
raw = client.query("SELECT count(), uniqExact(event_id) FROM clicks")
print(json.dumps({"final": final.result_rows, "raw": raw.result_rows[0]}))
"""


def _clickhouse_counts(url: str) -> tuple[dict[int, int], list[int]]:
    """Read ClickHouse in a process of its own, once ingest has let go of it."""
    result = subprocess.run(
        [sys.executable, "-c", _READ_CLICKHOUSE, url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout.splitlines()[-1])
    return {int(k): int(v) for k, v in body["final"]}, body["raw"]


# -- the test ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Return link-store settings: a SQLite file, or Postgres in its own schema."""
    if request.param == "sqlite":
        return {"database_url": f"sqlite:///{tmp_path / 'links.sqlite3'}"}
    schema = request.getfixturevalue("pg_schema")
    return {"database_url": POSTGRES_URL, "database_schema": schema}


@pytest.mark.timeout(300)
async def test_killed_consumers_count_every_click_exactly_once(
    tmp_path: Path, store_settings: dict[str, str], redis_settings: dict[str, str]
) -> None:
    settings = {
        **_COMMON,
        **store_settings,
        **redis_settings,
        "data_dir": str(tmp_path / "data"),
        "clickhouse_url": f"chdb://{tmp_path / 'chdb'}",
    }
    _run(tmp_path, settings, "migrate")
    key = _run(tmp_path, settings, "keys", "create", "--name", "kill")
    fleet = _Fleet(tmp_path, settings)
    rng = random.Random(SEED)
    try:
        base = _serve(fleet)
        codes = _create_links(base, key.splitlines()[-1])
        for role in (
            _Role("aggregate-a", ("aggregate",)),
            _Role("aggregate-b", ("aggregate",)),
            _Role("ingest", ("ingest", "--consumers", "2")),
        ):
            fleet.start(role)

        load = _Load(base, [rng.choice(codes) for _ in range(CLICKS)])
        started = time.monotonic()
        sending = asyncio.create_task(load.run())
        kills = await _chaos(fleet, rng, load, sending)
        await sending
        loaded = time.monotonic() - started

        streams = stream_names(settings["redis_prefix"], 2)
        client = redis.Redis.from_url(settings["redis_url"])
        try:
            await asyncio.to_thread(_wait_settled, fleet, client, streams)
            dead = client.xlen(dead_letter_stream(settings["redis_prefix"]))
        finally:
            client.close()
        exits = {name: fleet.stop(r.process) for name, r in fleet.roles.items()}
    finally:
        fleet.stop_all()

    lives = {name: role.lives for name, role in fleet.roles.items()}
    print(f"load {loaded:.1f} s, kills at {kills}, lives {lives}")
    assert exits == {"aggregate-a": 0, "aggregate-b": 0, "ingest": 0}
    assert dead == 0
    assert len(kills) == KILLS and load.done == CLICKS
    answered = load.answered
    in_store = _store_counts(settings)
    in_clickhouse, raw = _clickhouse_counts(settings["clickhouse_url"])
    print(f"clickhouse rows {raw[0]}, distinct events {raw[1]}")
    assert {code: clicks for code, clicks in in_store.values()} == {
        code: answered[code] for code in codes
    }
    assert {in_store[i][0]: n for i, n in in_clickhouse.items()} == {
        code: answered[code] for code in codes if answered[code]
    }


# -- killed between write and acknowledgement -------------------------------------

# A consumer process whose sink kills the process right after a write
# committed: the entries stay pending, their effect already durable.
_WRITE_THEN_DIE = """
import asyncio, os, signal, sys
from boltlink.settings import Settings
from boltlink.workers import run

opened = run._open_sink

async def open_dying(role, settings, redis):
    sink, *rest = await opened(role, settings, redis)
    write = sink.write

    async def write_then_die(stream, entries):
        await write(stream, entries)
        os.kill(os.getpid(), signal.SIGKILL)

    sink.write = write_then_die
    return (sink, *rest)

run._open_sink = open_dying
asyncio.run(run.run_role(sys.argv[1], Settings.from_env(), asyncio.Event()))
"""


def _seed_link(settings: dict[str, str], tmp_path: Path) -> int:
    """Create one link through the store; return its id."""
    script = (
        "import asyncio\n"
        "from boltlink.backends import open_store\n"
        "from boltlink.models import NewLink\n"
        "from boltlink.settings import Settings\n"
        "async def main():\n"
        "    store = await open_store(Settings.from_env())\n"
        "    link = await store.create_link(NewLink(code='dies', url='https://e.com/'))\n"
        "    await store.close()\n"
        "    print(link.id)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def _counted(settings: dict[str, str], role: str, link_id: int) -> list[int]:
    """Return what the role's sink holds for the link (rows: FINAL, then raw)."""
    if role == "aggregate":
        by_id = _store_counts(settings)
        return [by_id[link_id][1]]
    final, _ = _clickhouse_counts(settings["clickhouse_url"])
    _, raw = _clickhouse_counts(settings["clickhouse_url"])
    return [final.get(link_id, 0), raw[0]]


@pytest.mark.parametrize("role", ["aggregate", "ingest"])
def test_consumer_killed_after_write_before_ack_counts_once(
    tmp_path: Path,
    store_settings: dict[str, str],
    redis_settings: dict[str, str],
    role: str,
) -> None:
    settings = {
        **_COMMON,
        **store_settings,
        **redis_settings,
        "data_dir": str(tmp_path / "data"),
        "clickhouse_url": f"chdb://{tmp_path / 'chdb'}",
        "stream_partitions": "1",
    }
    _run(tmp_path, settings, "migrate")
    link_id = _seed_link(settings, tmp_path)
    [stream] = stream_names(settings["redis_prefix"], 1)
    client = redis.Redis.from_url(settings["redis_url"])
    try:
        clicks = [
            Click(link_id=link_id, code="dies", ts_ms=1_700_000_000_000 + n)
            for n in range(3)
        ]
        for n in range(3):
            client.xadd(stream, encode_clicks(clicks[: n + 1]))

        dying = subprocess.run(
            [sys.executable, "-c", _WRITE_THEN_DIE, role],
            cwd=tmp_path,
            env=_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dying.returncode == -signal.SIGKILL, dying.stderr
        # Written, not acknowledged.
        assert client.xpending(stream, role)["pending"] == 3
        assert _counted(settings, role, link_id)[0] == 6

        fleet = _Fleet(tmp_path, settings)
        try:
            fleet.start(_Role(role, (role,)))
            _wait_settled(fleet, client, [stream], groups=(role,))
            assert fleet.stop(fleet.roles[role].process) == 0
        finally:
            fleet.stop_all()
        assert client.xpending(stream, role)["pending"] == 0
    finally:
        client.close()
    assert _counted(settings, role, link_id) == [6] * (1 if role == "aggregate" else 2)
    assert "reclaimed=3" in fleet.log(role) or "read=3" in fleet.log(role)


# -- SIGTERM ----------------------------------------------------------------------

# `boltlink aggregate` whose sink takes SECONDS per write, and says when it
# starts one by creating the file MARK.
_SLOW_WRITES = """
import asyncio, pathlib, sys
from boltlink import cli
from boltlink.workers import run

seconds, mark = float(sys.argv[1]), pathlib.Path(sys.argv[2])
opened = run._open_sink

async def open_slow(role, settings, redis):
    sink, *rest = await opened(role, settings, redis)
    write = sink.write

    async def slow_write(stream, entries):
        mark.touch()
        await asyncio.sleep(seconds)
        await write(stream, entries)

    sink.write = slow_write
    return (sink, *rest)

run._open_sink = open_slow
sys.argv[1:] = ["aggregate"]
cli.main()
"""


@pytest.mark.parametrize(
    ("write_seconds", "shutdown_timeout", "finished"),
    [(1.0, "30", True), (120.0, "1", False)],
)
def test_sigterm_finishes_the_batch_or_gives_up_after_the_timeout(
    tmp_path: Path,
    redis_settings: dict[str, str],
    write_seconds: float,
    shutdown_timeout: str,
    finished: bool,
) -> None:
    settings = {
        **_COMMON,
        **redis_settings,
        "database_url": f"sqlite:///{tmp_path / 'links.sqlite3'}",
        "data_dir": str(tmp_path / "data"),
        "stream_partitions": "1",
        "shutdown_timeout": shutdown_timeout,
    }
    _run(tmp_path, settings, "migrate", "--no-analytics")
    link_id = _seed_link(settings, tmp_path)
    [stream] = stream_names(settings["redis_prefix"], 1)
    client = redis.Redis.from_url(settings["redis_url"])
    mark = tmp_path / "writing"
    log = tmp_path / "aggregate.log"
    try:
        click = Click(link_id=link_id, code="dies", ts_ms=1_700_000_000_000)
        for _ in range(3):
            client.xadd(stream, encode_clicks([click]))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", _SLOW_WRITES, str(write_seconds), str(mark)],
                cwd=tmp_path,
                env=_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while not mark.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert mark.exists(), log.read_text()
            process.send_signal(signal.SIGTERM)
            # Well before a 120 s write could end: the timeout cut it short.
            assert process.wait(60) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        pending = client.xpending(stream, "aggregate")["pending"]
    finally:
        client.close()

    output = log.read_text()
    clicks = _store_counts(settings)[link_id][1]
    if finished:
        assert (pending, clicks) == (0, 3)
        assert "still busy" not in output
        assert "written=3 acked=3" in output
    else:
        # Cancelled mid-write: nothing acknowledged, so the next consumer
        # reclaims all three entries.
        assert (pending, clicks) == (3, 0)
        assert "1 tasks still busy 1.0 s after stop, cancelled" in output
        assert "written=0 acked=0" in output
