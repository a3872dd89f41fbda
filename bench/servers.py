"""Start the processes under test on a free loopback port and stop them after.

Every process gets its own session, so stopping it reaches the children it
started (granian workers, the embedded Valkey) and nothing else. Output goes
to a log file in the sandbox, never to a pipe that could fill and stall it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "Served",
    "free_port",
    "granian_command",
    "rss_mib",
    "serve",
    "spawn",
    "stop",
]

REPO = Path(__file__).resolve().parent.parent
_BIN = Path(sys.executable).parent


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def granian_command(target: str, *, port: int, workers: int) -> list[str]:
    """Return the granian command line serving ``target`` as BoltLink is served."""
    return [
        str(_BIN / "granian"),
        "--interface=asgi",
        "--loop=uvloop",
        f"--workers={workers}",
        "--host=127.0.0.1",
        f"--port={port}",
        target,
    ]


def boltlink_command(*args: str) -> list[str]:
    """Return the command line of a ``boltlink`` subcommand."""
    return [str(_BIN / "boltlink"), *args]


def spawn(
    command: Sequence[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session with output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(command),
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop ``process`` with SIGTERM, then SIGKILL its session if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    # The session id is the process id (start_new_session): this reaches the
    # children it started and nothing else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@dataclass
class Served:
    """A running HTTP server under test."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def worker_pids(self) -> list[int]:
        """Return the pids of the granian workers (Python children only)."""
        children = _children(self.process.pid)
        return [
            p
            for p in children
            if _exe_name(p).startswith("python") and not _is_consumer_child(p)
        ]

    def consumer_pids(self) -> list[int]:
        """Return the pid of serve's consumer process, if it runs one."""
        return [p for p in _children(self.process.pid) if _is_consumer_child(p)]


@contextlib.contextmanager
def serve(
    command: Sequence[str],
    env: dict[str, str],
    *,
    port: int,
    log: Path,
    probe: str = "/health",
    workers: int = 1,
    timeout: float = 60.0,
) -> Iterator[Served]:
    """Run a server until the block ends; wait until it answers ``probe``."""
    process = spawn(command, env, log)
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(served, probe, workers, timeout)
        yield served
    finally:
        stop(process)


def _wait_ready(served: Served, probe: str, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"server exited early, see {served.log}")
        # Every worker must be up: a probe answered by the first one alone
        # would let the warm-up pay for the second one's start.
        if len(served.worker_pids()) >= workers and _answers(served.url + probe):
            time.sleep(0.5 if workers == 1 else 1.5)
            return
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f} s, see {served.log}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def _children(pid: int) -> list[int]:
    # Read every process's parent from /proc/<pid>/stat: the field after the
    # command name, which is in parentheses and may hold spaces.
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def _exe_name(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return ""
    return Path(argv0.decode()).name


def _is_consumer_child(pid: int) -> bool:
    # boltlink.workers.child: the embedded profile's consumers.
    try:
        return b"boltlink.workers.child" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def rss_mib(pid: int) -> float | None:
    """Return the resident set size of ``pid`` in MiB (VmRSS), None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None
