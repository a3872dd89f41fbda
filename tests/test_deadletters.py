"""Test ``boltlink dead-letters``: list, show, replay and purge, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from boltlink.clicks import Click, encode_clicks, stream_names
from boltlink.deadletters import (
    ONLY_FIELD,
    ORIGIN_FIELD,
    dead_letter_stream,
    record_dead_letter,
)

pytestmark = pytest.mark.redis


def _boltlink(
    tmp_path: Path, redis_url: str, prefix: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``boltlink ARGS`` with only the Redis settings of this test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}
    env.update(BOLTLINK_REDIS_URL=redis_url, BOLTLINK_REDIS_PREFIX=prefix)
    return subprocess.run(
        [sys.executable, "-m", "boltlink", "--data-dir", str(tmp_path), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def _seed(redis: Any, prefix: str) -> tuple[str, list[str]]:
    """Dead-letter two entries of partition 0, one per group; return their ids."""
    stream = stream_names(prefix, 1)[0]
    fields = encode_clicks([Click(link_id=4, code="abc", ts_ms=1_700_000_000_000)])
    dead = []
    for entry_id, group in (("1-0", "aggregate"), ("2-0", "ingest")):
        dead.append(
            await record_dead_letter(
                redis,
                prefix,
                stream=stream,
                entry_id=entry_id,
                group=group,
                fields=fields,
                error="ValueError: boom",
                deliveries=6,
            )
        )
    return stream, dead


@pytest.fixture
def run(tmp_path: Path, redis_url: str, redis_prefix: str) -> Any:
    """Return a runner of ``boltlink`` bound to this test's Redis prefix."""

    def runner(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return _boltlink(tmp_path, redis_url, redis_prefix, *args, stdin=stdin)

    return runner


async def test_list_prints_one_line_per_dead_letter(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    stream, dead = await _seed(redis_client, redis_prefix)

    result = run("dead-letters", "list")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{dead[0]}\taggregate\t{stream}\t1-0\tdeliveries=6\tValueError: boom",
        f"{dead[1]}\tingest\t{stream}\t2-0\tdeliveries=6\tValueError: boom",
    ]


async def test_show_prints_the_dead_letter_and_its_payload(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    stream, dead = await _seed(redis_client, redis_prefix)

    result = run("dead-letters", "show", dead[1])

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:7] == [
        f"dead_id: {dead[1]}",
        f"stream: {stream}",
        "entry_id: 2-0",
        "delivered_as: 2-0",
        "group: ingest",
        "deliveries: 6",
        "error: ValueError: boom",
    ]
    assert lines[7].startswith('payload.c: [{"l":4,"k":"abc"')
    assert lines[8] == "payload.v: 1"


async def test_show_unknown_id_fails_in_one_line(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    result = run("dead-letters", "show", "9-9")

    assert result.returncode == 1
    assert result.stderr == "Error: no dead letter with id '9-9'\n"


@pytest.mark.parametrize(
    "bad_id", ["junk", "", "99999999999999999999-0", "1-99999999999999999999", "1-"]
)
@pytest.mark.parametrize("command", ["show", "replay", "purge"])
async def test_malformed_id_fails_in_one_line_before_redis(
    redis_client: Any, redis_prefix: str, run: Any, command: str, bad_id: str
) -> None:
    await _seed(redis_client, redis_prefix)

    result = run("dead-letters", command, bad_id)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: dead letter id {bad_id!r} is not <ms>-<seq> of two "
        "unsigned 64-bit integers\n"
    )
    assert await redis_client.xlen(dead_letter_stream(redis_prefix)) == 2


async def test_largest_valid_id_is_asked_of_redis(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    top = f"{2**64 - 1}-{2**64 - 1}"

    result = run("dead-letters", "show", top)

    assert result.returncode == 1
    assert result.stderr == f"Error: no dead letter with id {top!r}\n"


async def test_replay_adds_the_entry_back_for_its_group_only(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    stream, dead = await _seed(redis_client, redis_prefix)

    result = run("dead-letters", "replay", dead[0])

    assert result.returncode == 0, result.stderr
    [(new_id, fields)] = await redis_client.xrange(stream)
    assert result.stdout == (
        f"replayed {dead[0]} as {new_id.decode()} in {stream} for group aggregate\n"
    )
    assert fields[ONLY_FIELD] == b"aggregate"
    assert fields[ORIGIN_FIELD] == b"1-0"
    assert fields[b"v"] == b"1"
    remaining = await redis_client.xrange(dead_letter_stream(redis_prefix))
    assert [i.decode() for i, _ in remaining] == [dead[1]]


async def test_replay_all_replays_every_dead_letter(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    stream, _ = await _seed(redis_client, redis_prefix)

    result = run("dead-letters", "replay", "--all")

    assert result.returncode == 0, result.stderr
    entries = await redis_client.xrange(stream)
    assert [f[ONLY_FIELD] for _, f in entries] == [b"aggregate", b"ingest"]
    assert await redis_client.xlen(dead_letter_stream(redis_prefix)) == 0


@pytest.mark.parametrize(
    "args",
    [
        ("dead-letters", "replay"),
        ("dead-letters", "replay", "1-0", "--all"),
        ("dead-letters", "purge"),
    ],
)
async def test_replay_and_purge_need_ids_or_all(
    redis_client: Any, run: Any, args: tuple[str, ...]
) -> None:
    result = run(*args)

    assert result.returncode == 2
    assert "give dead letter ids or --all, not both or neither" in result.stderr


async def test_purge_deletes_one_or_all_dead_letters(
    redis_client: Any, redis_prefix: str, run: Any
) -> None:
    _, dead = await _seed(redis_client, redis_prefix)

    one = run("dead-letters", "purge", dead[0])
    refused = run("dead-letters", "purge", "--all", stdin="n\n")
    everything = run("dead-letters", "purge", "--all", "--yes")

    assert (one.returncode, one.stdout) == (0, "purged 1 dead letters\n")
    assert refused.returncode == 1
    assert (everything.returncode, everything.stdout) == (0, "purged 1 dead letters\n")
    assert await redis_client.xlen(dead_letter_stream(redis_prefix)) == 0


def test_dead_letters_needs_a_redis_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}
    argv = [sys.executable, "-m", "boltlink", "--data-dir", str(tmp_path)]
    result = subprocess.run(
        [*argv, "dead-letters", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert result.stderr.startswith(
        "Error: boltlink dead-letters needs BOLTLINK_REDIS_URL"
    )
    assert len(result.stderr.splitlines()) == 1
