"""Test how a process that runs consumers sets its garbage collector.

Each case starts a fresh interpreter, since the collector's settings belong
to the whole process; the consumers themselves are replaced by a probe that
prints the settings they would have run under.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import gc
import sys

async def probe(*args, **kwargs):
    print(*gc.get_threshold(), gc.get_freeze_count() > 1000)
"""

_CLI = (
    _PROBE
    + """
import boltlink.workers.run
boltlink.workers.run.run_role = probe
from boltlink.cli import cli
cli([sys.argv[1]], standalone_mode=False)
"""
)

_CHILD = (
    _PROBE
    + """
import boltlink.asgi
boltlink.asgi.run_pipeline = probe
from boltlink.workers.child import main
main()
"""
)


def _run(code: str, tmp_path: Path, *args: str) -> str:
    env = {
        **os.environ,
        "BOLTLINK_DATA_DIR": str(tmp_path),
        # Never reached: the probe stands in for the consumers.
        "BOLTLINK_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_fresh_interpreter_has_the_default_thresholds(tmp_path: Path) -> None:
    # What the cases below differ from.
    assert _run(_PROBE + "import asyncio; asyncio.run(probe())", tmp_path) == (
        "700 10 10 False"
    )


@pytest.mark.parametrize("role", ["aggregate", "ingest"])
def test_the_consumer_commands_freeze_the_start_up_heap_and_collect_less_often(
    tmp_path: Path, role: str
) -> None:
    assert _run(_CLI, tmp_path, role) == "50000 20 10 True"


def test_serves_consumer_process_does_the_same(tmp_path: Path) -> None:
    assert _run(_CHILD, tmp_path) == "50000 20 10 True"
