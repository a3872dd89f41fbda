"""Benchmark the consumers: drain a pre-filled click stream into each sink.

The stream is filled once with pipelined ``XADD`` of entries in BoltLink's
own format, ten clicks each as the redirect side's group commit writes
them, over a thousand links that exist in the store. A run is timed from
the moment its consumer group appears until the group has nothing left to
read and nothing pending (``XINFO GROUPS``: ``lag`` and ``pending`` both 0).

Before each run the sink's group is destroyed, so the consumer creates it
again at id 0 and reads the whole stream. So that every run does the same
work, the aggregate run starts from an empty ``applied_click_entries``
(else every entry would be skipped as already applied) and each ingest run
gets a fresh chDB folder. A group that never reads holds the stream, which
the consumers would otherwise trim behind themselves.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.measure import Plan
from bench.results import PipelineRow, Results
from bench.sandbox import DATABASE_URL, REDIS_URL, Sandbox
from bench.seed import Tally
from bench.servers import boltlink_command, spawn, stop
from boltlink.backends import open_store
from boltlink.clicks import Click, encode_clicks, stream_names
from boltlink.models import NewLink
from boltlink.settings import Settings

__all__ = ["pipeline_bench", "profile_sink"]

CLICKS_PER_ENTRY = 10
#: (sink, consumers, processes): consumers are spread over that many
#: processes. Tasks of one process share its GIL; ``aggregate`` scales out
#: by process, while ``ingest`` on chDB is one process per data folder.
_SETUPS = (
    ("aggregate", 1, 1),
    ("aggregate", 2, 2),
    ("aggregate", 2, 1),
    ("ingest", 1, 1),
    ("ingest", 2, 1),
)
_HOLD_GROUP = "bench-hold"
LINKS = 1000
_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def pipeline_bench(plan: Plan, results: Results) -> None:
    """Time each sink with one and with two consumers."""
    with Sandbox("pipeline") as box:
        env = box.production_env()
        box.migrate(env)
        links = asyncio.run(_create_links(Settings.from_env(env)))
        stream = stream_names(box.prefix, 1)[0]
        _fill(stream, links, plan.pipeline_events)
        for sink, consumers, processes in _SETUPS:
            seconds = []
            for run in range(plan.pipeline_repeats):
                folder = box.folder / f"chdb-{sink}-{consumers}-{processes}-{run}"
                run_env = {**env, "BOLTLINK_CLICKHOUSE_URL": f"chdb://{folder}"}
                _reset(box, stream, sink)
                seconds.append(_drain(run_env, box, stream, sink, consumers, processes))
            row = PipelineRow(sink, consumers, plan.pipeline_events, seconds, processes)
            results.pipeline.append(row)
            if sink == "ingest":
                results.tallies[f"pipeline ingest {consumers}c"] = _tally(
                    plan.pipeline_events, _chdb_count(folder)
                )
        aggregate_runs = sum(1 for setup in _SETUPS if setup[0] == "aggregate")
        applied = plan.pipeline_events * plan.pipeline_repeats * aggregate_runs
        results.tallies["pipeline aggregate"] = _tally(applied, _store_clicks(box))


def profile_sink(
    sink: str, seconds: int, output: Path, *, gil_only: bool = True
) -> float:
    """Sample one ``sink`` consumer with py-spy into ``output``; return events/s.

    The stream holds more events than the consumer drains meanwhile, so
    every sample is taken under load. With ``gil_only`` false every busy
    thread is sampled: chDB inserts run in a thread without the GIL.
    """
    with Sandbox("profile") as box:
        env = box.production_env()
        box.migrate(env)
        links = asyncio.run(_create_links(Settings.from_env(env)))
        stream = stream_names(box.prefix, 1)[0]
        _fill(stream, links, 150_000 * seconds)
        process = spawn(boltlink_command(sink, "--consumers=1"), env, box.log(sink))
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            _wait_for(client, stream, sink, [process], _appeared, 120.0)
            time.sleep(1.0)
            before = _entries_read(client, stream, sink)
            subprocess.run(
                [
                    "py-spy",
                    "record",
                    f"--pid={process.pid}",
                    f"--duration={seconds}",
                    "--rate=250",
                    *(["--gil"] if gil_only else []),
                    "--format=raw",
                    f"--output={output}",
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
                timeout=seconds + 60,
            )
            read = _entries_read(client, stream, sink) - before
        finally:
            client.close()
            stop(process)
    return read * CLICKS_PER_ENTRY / seconds


def _entries_read(client: Any, stream: str, sink: str) -> int:
    groups = {g["name"]: g for g in client.xinfo_groups(stream)}
    return int(groups[sink]["entries-read"] or 0)


async def _create_links(settings: Settings) -> list[tuple[int, str]]:
    store = await open_store(settings)
    try:
        made = []
        for number in range(LINKS):
            code = f"p{number}"
            new = NewLink(code=code, url=f"https://example.com/p/{number}")
            made.append((await store.create_link(new)).id)
    finally:
        await store.close()
    return [(link_id, f"p{n}") for n, link_id in enumerate(made)]


def _fill(stream: str, links: list[tuple[int, str]], events: int) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    now = int(time.time() * 1000)
    writer = secrets.token_hex(6)
    try:
        # The consumers trim the stream behind the slowest group; this one
        # never reads, so every run finds the whole stream still there.
        client.xgroup_create(stream, _HOLD_GROUP, id="0", mkstream=True)
        pipe = client.pipeline(transaction=False)
        for entry in range(events // CLICKS_PER_ENTRY):
            clicks = [
                _click(links[(entry * CLICKS_PER_ENTRY + n) % len(links)], now)
                for n in range(CLICKS_PER_ENTRY)
            ]
            # A write id per entry, as the recorder gives them: the sinks
            # deduplicate on it.
            fields = encode_clicks(clicks, write_id=f"{writer}-{entry}")
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def _click(link: tuple[int, str], now: int) -> Click:
    return Click(
        link_id=link[0],
        code=link[1],
        ts_ms=now,
        ip="203.0.113.7",
        user_agent=_USER_AGENT,
        referrer="https://news.example.org/story",
        accept_language="en-GB,en;q=0.9",
    )


def _drain(
    env: dict[str, str],
    box: Sandbox,
    stream: str,
    sink: str,
    consumers: int,
    processes: int,
) -> float:
    command = boltlink_command(sink, f"--consumers={consumers // processes}")
    spawned = [
        spawn(command, env, box.log(f"{sink}-{consumers}-{processes}-{n}"))
        for n in range(processes)
    ]
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        started = _wait_for(client, stream, sink, spawned, _appeared, 120.0)
        finished = _wait_for(client, stream, sink, spawned, _drained, 600.0)
        return finished - started
    finally:
        client.close()
        for process in spawned:
            stop(process)


def _appeared(group: dict[str, Any]) -> bool:
    return True


def _drained(group: dict[str, Any]) -> bool:
    return group.get("lag") == 0 and group.get("pending") == 0


def _wait_for(
    client: Any,
    stream: str,
    sink: str,
    processes: list[subprocess.Popen[bytes]],
    done: Any,
    timeout: float,
) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"boltlink {sink} exited early ({process.returncode})"
                )
        groups = {g["name"]: g for g in client.xinfo_groups(stream)}
        if sink in groups and done(groups[sink]):
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"boltlink {sink} did not finish within {timeout:.0f} s")


def _reset(box: Sandbox, stream: str, sink: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.xgroup_destroy(stream, sink)
    finally:
        client.close()
    if sink == "aggregate":
        with psycopg.connect(DATABASE_URL) as conn:
            conn.execute(f'TRUNCATE "{box.schema}".applied_click_entries')


def _tally(expected: int, counted: int) -> Tally:
    return Tally(expected, expected, counted, 0, 0.0)


def _store_clicks(box: Sandbox) -> int:
    with psycopg.connect(DATABASE_URL) as conn:
        row = conn.execute(
            f'SELECT coalesce(sum(clicks), 0) FROM "{box.schema}".links'
        ).fetchone()
    return int(row[0]) if row else 0


def _chdb_count(folder: Any) -> int:
    # chDB lets one process open a folder; the ingest process has exited,
    # and a child process keeps chDB out of the harness itself.
    code = (
        "import clickhouse_connect, sys;"
        f"c = clickhouse_connect.get_client(dsn='chdb://{folder}');"
        "print(c.query('SELECT count() FROM clicks FINAL').result_rows[0][0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"counting chDB rows failed: {done.stderr.strip()}")
    return int(done.stdout.split()[-1])
