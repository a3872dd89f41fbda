"""Run ``boltlink serve`` end to end: real processes, real backends, real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from boltlink.workers.child import CONSUMER_NICENESS

# The pg_schema fixture skips a test when this is unset.
POSTGRES_URL = os.environ.get("BOLTLINK_TEST_DATABASE_URL", "")
pytestmark = pytest.mark.slow

_DESTINATION = "https://www.python.org/"


# -- processes --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**settings: str) -> dict[str, str]:
    """Return this process's environment without BOLTLINK_*, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}
    env.update({f"BOLTLINK_{name.upper()}": value for name, value in settings.items()})
    return env


def _boltlink(cwd: Path, settings: dict[str, str], *args: str) -> str:
    """Run ``boltlink ARGS`` to completion; return its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "boltlink", *args],
        cwd=cwd,
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """Send SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@dataclass
class Server:
    """One running ``boltlink serve`` and what the test needs to reach it."""

    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def tail(self) -> str:
        """Return the end of the server's output, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:]


def _wait_healthy(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"serve exited early:\n{server.tail()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"serve not healthy after {timeout} s:\n{server.tail()}")


class _Servers:
    """Start serve and consumer processes for one test; stop them all after."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, settings: dict[str, str], *args: str) -> Server:
        """Start ``boltlink ARGS`` with its output in ``NAME.log``."""
        log = self.cwd / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "boltlink", *args],
                cwd=self.cwd,
                env=_env(**settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._running.append(process)
        return Server(process, "", log)

    def serve(self, name: str, settings: dict[str, str]) -> Server:
        """Start ``boltlink serve`` on a free port and wait until it answers."""
        port = _free_port()
        server = self.start(name, settings, "serve", "--port", str(port))
        server.base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(server)
        return server

    def stop_all(self) -> None:
        """Stop every process still running, the last started first."""
        try:
            while self._running:
                _stop(self._running.pop())
        finally:
            for process in self._running:
                process.kill()
                process.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[_Servers]:
    """Yield a starter of processes that are all stopped after the test."""
    started = _Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def production(
    tmp_path: Path, pg_schema: str, redis_settings: dict[str, str]
) -> dict[str, str]:
    """Return settings for Postgres, a Redis server and chDB, migrated."""
    settings = {
        "data_dir": str(tmp_path / "data"),
        "database_url": POSTGRES_URL,
        "database_schema": pg_schema,
        "clickhouse_url": f"chdb://{tmp_path / 'chdb'}",
        "access_log": "false",
        **redis_settings,
    }
    _boltlink(tmp_path, settings, "migrate")
    return settings


# -- /proc ------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return found


def _alive(pid: int) -> bool:
    """Tell whether ``pid`` runs and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _consumer_processes(server: Server) -> set[int]:
    """Return the pids of serve's consumer process (boltlink.workers.child)."""
    found = set()
    for pid in _children(server.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"boltlink.workers.child" in cmdline and _alive(pid):
            found.add(pid)
    return found


def _valkeys_in(folder: Path) -> set[int]:
    """Return the pids of running valkey-server processes working in ``folder``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if name == "valkey-server" and cwd == str(folder.resolve()):
            found.add(int(entry.name))
    return {pid for pid in found if _alive(pid)}


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` runs; return those still running."""
    deadline = time.monotonic() + timeout
    while (running := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


# -- the walkthrough --------------------------------------------------------------


def _create_link(api: httpx.Client, url: str = _DESTINATION) -> dict[str, object]:
    response = api.post("/api/v1/links", json={"url": url})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def _clicks(api: httpx.Client, code: str) -> int:
    response = api.get(f"/api/v1/links/{code}")
    assert response.status_code == 200, response.text
    clicks: int = response.json()["clicks"]
    return clicks


def _wait_clicks(api: httpx.Client, code: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (clicks := _clicks(api, code)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return clicks


def _walk_through(server: Server, key: str) -> None:
    """Shorten a URL, follow it ten times, and see exactly ten clicks counted."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        link = _create_link(api)
        code = str(link["code"])
        assert link["short_url"] == f"{server.base_url}/{code}"
        assert link["clicks"] == 0

        head = httpx.head(str(link["short_url"]))
        assert head.status_code == 302
        assert head.headers["location"] == _DESTINATION

        for _ in range(10):
            got = httpx.get(str(link["short_url"]), follow_redirects=False)
            assert got.status_code == 302
            assert got.headers["location"] == _DESTINATION

        # Clicks are counted by the aggregate consumer, shortly after.
        assert _wait_clicks(api, code, 10, timeout=5.0) == 10, server.tail()
        time.sleep(0.5)
        assert _clicks(api, code) == 10


def _create_key(cwd: Path, settings: dict[str, str]) -> str:
    return _boltlink(cwd, settings, "keys", "create", "--name", "e2e").splitlines()[-1]


def test_embedded_serve_counts_clicks_and_stops_cleanly(
    tmp_path: Path, servers: _Servers
) -> None:
    data_dir = tmp_path / "boltlink-data"
    settings = {"data_dir": str(data_dir)}
    server = servers.serve("serve", settings)
    key = _create_key(tmp_path, settings)

    _walk_through(server, key)
    valkeys = _valkeys_in(data_dir / "valkey")
    assert len(valkeys) == 1
    assert valkeys <= _children(server.process.pid)

    started = time.monotonic()
    assert _stop(server.process) == 0, server.tail()
    assert time.monotonic() - started < 15.0
    assert _wait_gone(valkeys, timeout=1.0) == set()


def test_embedded_workers_serve_while_a_child_runs_the_consumers(
    tmp_path: Path, servers: _Servers
) -> None:
    data_dir = tmp_path / "boltlink-data"
    settings = {"data_dir": str(data_dir), "claim_idle_ms": "500"}
    server = servers.serve("serve", {**settings, "workers": "2"})
    [consumers] = _consumer_processes(server)
    key = _boltlink(
        tmp_path,
        settings,
        "keys",
        "create",
        "--name",
        "e2e",
        "--scope",
        "links:write",
        "--scope",
        "links:read",
        "--scope",
        "analytics:read",
    ).splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        code = str(_create_link(api)["code"])
        for _ in range(5):
            assert httpx.get(f"{server.base_url}/{code}").status_code == 302
        assert _wait_clicks(api, code, 5, timeout=10.0) == 5, server.tail()
        # The child holds the chDB folder; the workers never open it.
        assert _holds_chdb(consumers, data_dir)
        workers = _children(server.process.pid) - {consumers}
        workers -= _valkeys_in(data_dir / "valkey")
        assert len(workers) == 2
        assert not any(_holds_chdb(pid, data_dir) for pid in workers)
        # Redirects first: the consumers run at a lower CPU priority.
        assert {_niceness(pid) for pid in workers} == {0}
        assert _niceness(consumers) == CONSUMER_NICENESS == 10

        # Killed, the child is started again; clicks made meanwhile wait in
        # the stream and are counted once it is back.
        os.kill(consumers, signal.SIGKILL)
        assert _wait_gone({consumers}, timeout=5.0) == set()
        for _ in range(7):
            assert httpx.get(f"{server.base_url}/{code}").status_code == 302
        assert _wait_clicks(api, code, 12, timeout=20.0) == 12, server.tail()
        [again] = _consumer_processes(server)
        assert again != consumers
        log = server.log.read_text()
        assert f"consumer process pid={consumers} exited with code -9" in log
        assert f"consumers started in process pid={again}" in log

    # Analytics are read through the new child, from both workers.
    assert _stats_clicks(server, key, code, 12) == [12] * 12

    assert _stop(server.process) == 0, server.tail()
    assert _wait_gone({again}, timeout=1.0) == set()


def _niceness(pid: int) -> int:
    # Field 19 of /proc/PID/stat, the 17th after the command name.
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


def _holds_chdb(pid: int, data_dir: Path) -> bool:
    """Tell whether ``pid`` has a file of the chDB folder open."""
    folder = str((data_dir / "chdb").resolve())
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(folder):
                return True
        except OSError:
            continue
    return False


def _answered(url: str, times: int, timeout: float = 2.0) -> int:
    """Ask ``url`` up to ``times`` times; return how many redirects came back."""
    answered = 0
    for _ in range(times):
        try:
            got = httpx.get(url, timeout=timeout)
        except httpx.TransportError:
            continue
        answered += got.status_code == 302
    return answered


def _links_key(cwd: Path, settings: dict[str, str]) -> str:
    return _boltlink(
        cwd, settings, "keys", "create", "--name", "e2e",
        "--scope", "links:write", "--scope", "links:read",
    ).splitlines()[-1]  # fmt: skip


def test_embedded_valkey_killed_is_started_again_and_no_click_is_lost(
    tmp_path: Path, servers: _Servers
) -> None:
    data_dir = tmp_path / "boltlink-data"
    settings = {"data_dir": str(data_dir), "access_log": "false"}
    server = servers.serve("serve", settings)
    headers = {"Authorization": f"Bearer {_links_key(tmp_path, settings)}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        code = str(_create_link(api)["code"])
        url = f"{server.base_url}/{code}"
        answered = _answered(url, 20)
        [valkey] = _valkeys_in(data_dir / "valkey")
        os.kill(valkey, signal.SIGKILL)
        # Answered meanwhile from the worker's cache, the clicks buffered.
        answered += _answered(url, 30)
        assert answered == 50
        assert _wait_clicks(api, code, 50, timeout=20.0) == 50, server.tail()
        [again] = _valkeys_in(data_dir / "valkey")
        assert again != valkey
        log = server.log.read_text()
        assert f"embedded valkey pid={valkey} exited with code -9" in log
        time.sleep(0.5)
        assert _clicks(api, code) == 50
    assert _stop(server.process) == 0, server.tail()
    assert _wait_gone({again}, timeout=1.0) == set()


def test_clicks_buffered_when_serve_stops_are_counted_by_the_next(
    tmp_path: Path, servers: _Servers
) -> None:
    data_dir = tmp_path / "boltlink-data"
    settings = {
        "data_dir": str(data_dir),
        "access_log": "false",
        "shutdown_timeout": "3",
    }
    server = servers.serve("serve", settings)
    headers = {"Authorization": f"Bearer {_links_key(tmp_path, settings)}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        code = str(_create_link(api)["code"])
    url = f"{server.base_url}/{code}"
    assert _answered(url, 10) == 10

    # Valkey stops answering: the worker answers from its cache and buffers
    # the clicks, and still holds them when serve is told to stop.
    [valkey] = _valkeys_in(data_dir / "valkey")
    os.kill(valkey, signal.SIGSTOP)
    try:
        # The first waits for Redis's timeouts (about 4 s), the others not.
        assert _answered(url, 15, timeout=15.0) == 15
        assert _stop(server.process, timeout=30.0) == 0, server.tail()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(valkey, signal.SIGKILL)
            os.kill(valkey, signal.SIGCONT)
    log = server.log.read_text()
    assert "click recorder stopped with 15 clicks unwritten, kept in" in log
    [spilled] = (data_dir / "spill").iterdir()

    again = servers.serve("again", settings)
    with httpx.Client(base_url=again.base_url, headers=headers) as api:
        assert _wait_clicks(api, code, 25, timeout=20.0) == 25, again.tail()
        time.sleep(0.5)
        assert _clicks(api, code) == 25
    assert f"({spilled.name}.claimed-" in again.log.read_text()
    assert list((data_dir / "spill").iterdir()) == []


def test_killed_serve_leaves_no_process_behind(
    tmp_path: Path, servers: _Servers
) -> None:
    data_dir = tmp_path / "boltlink-data"
    server = servers.serve("serve", {"data_dir": str(data_dir)})
    valkeys = _valkeys_in(data_dir / "valkey")
    children = _children(server.process.pid)
    assert len(valkeys) == 1
    # Valkey, the consumer process and granian's worker.
    assert len(children) == 3
    assert len(_consumer_processes(server)) == 1

    server.process.kill()
    server.process.wait()

    # Valkey gets SIGKILL, the worker and the consumers SIGTERM
    # (PR_SET_PDEATHSIG).
    try:
        assert _wait_gone(children, timeout=10.0) == set(), server.tail()
        assert _valkeys_in(data_dir / "valkey") == set()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/health", timeout=1.0)
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.postgres
def test_production_serve_counts_clicks(
    tmp_path: Path, servers: _Servers, production: dict[str, str]
) -> None:
    server = servers.serve("serve", production)
    key = _create_key(tmp_path, production)

    _walk_through(server, key)

    assert _stop(server.process) == 0, server.tail()


@pytest.mark.postgres
def test_separate_aggregate_process_counts_clicks(
    tmp_path: Path, servers: _Servers, production: dict[str, str]
) -> None:
    settings = {**production, "inprocess_workers": "false"}
    settings.pop("clickhouse_url")
    server = servers.serve("serve", settings)
    aggregate = servers.start("aggregate", settings, "aggregate")
    key = _create_key(tmp_path, settings)

    _walk_through(server, key)

    assert _stop(aggregate.process) == 0, aggregate.tail()
    assert "aggregate stopped" in aggregate.tail()


@pytest.mark.postgres
def test_link_changes_reach_another_serve_process_at_once(
    tmp_path: Path, servers: _Servers, production: dict[str, str]
) -> None:
    settings = {**production, "inprocess_workers": "false"}
    settings.pop("clickhouse_url")
    first = servers.serve("first", settings)
    second = servers.serve("second", settings)
    headers = {"Authorization": f"Bearer {_create_key(tmp_path, settings)}"}
    writer = httpx.Client(base_url=first.base_url, headers=headers)
    reader = httpx.Client(base_url=second.base_url)
    with writer, reader:
        code = str(_create_link(writer, "https://example.com/0")["code"])
        assert reader.get(f"/{code}").headers["location"] == "https://example.com/0"

        for round_ in range(1, 21):
            url = f"https://example.com/{round_}"
            patched = writer.patch(f"/api/v1/links/{code}", json={"url": url})
            assert patched.status_code == 200, patched.text
            got = reader.get(f"/{code}")
            assert (got.status_code, got.headers["location"]) == (302, url)

        assert writer.delete(f"/api/v1/links/{code}").status_code == 204
        assert reader.get(f"/{code}").status_code == 410


# -- analytics on chDB from every process -------------------------------------------


def _stats_clicks(server: Server, key: str, code: str, expected: int) -> list[int]:
    """Ask a link's stats 12 times (spread over the workers); return the totals."""
    headers = {"Authorization": f"Bearer {key}"}
    totals: list[int] = []
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            got = api.get(f"/api/v1/links/{code}/stats?bots=include")
            if got.status_code == 200 and got.json()["totals"]["clicks"] == expected:
                break
            time.sleep(0.2)
        for _ in range(12):
            # A fresh connection each time, so granian spreads them out.
            got = httpx.get(
                f"{server.base_url}/api/v1/links/{code}/stats?bots=include",
                headers=headers,
            )
            assert got.status_code == 200, (got.text, server.tail())
            totals.append(got.json()["totals"]["clicks"])
    return totals


def _click_link(server: Server, key: str, times: int) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        code = str(_create_link(api)["code"])
        for _ in range(times):
            assert httpx.get(f"{server.base_url}/{code}").status_code == 302
        assert _wait_clicks(api, code, times, timeout=10.0) == times
    return code


def test_embedded_serve_with_two_workers_answers_stats_from_each(
    tmp_path: Path, servers: _Servers
) -> None:
    settings = {"data_dir": str(tmp_path / "boltlink-data"), "workers": "2"}
    server = servers.serve("serve", settings)
    key = _boltlink(
        tmp_path, settings, "keys", "create", "--name", "stats",
        "--scope", "links:read", "--scope", "links:write", "--scope", "analytics:read",
    ).splitlines()[-1]  # fmt: skip
    code = _click_link(server, key, 7)

    assert _stats_clicks(server, key, code, 7) == [7] * 12
    assert _stop(server.process) == 0, server.tail()


@pytest.mark.postgres
def test_separate_ingest_on_chdb_answers_the_stats_of_serve(
    tmp_path: Path, servers: _Servers, production: dict[str, str]
) -> None:
    settings = {**production, "inprocess_workers": "false", "workers": "2"}
    server = servers.serve("serve", settings)
    servers.start("aggregate", settings, "aggregate")
    ingest = servers.start("ingest", settings, "ingest", "--consumers", "2")
    key = _boltlink(
        tmp_path, settings, "keys", "create", "--name", "stats",
        "--scope", "links:read", "--scope", "links:write", "--scope", "analytics:read",
    ).splitlines()[-1]  # fmt: skip
    code = _click_link(server, key, 5)

    assert _stats_clicks(server, key, code, 5) == [5] * 12
    assert _stop(ingest.process) == 0, ingest.tail()
    headers = {"Authorization": f"Bearer {key}"}
    gone = httpx.get(f"{server.base_url}/api/v1/links/{code}/stats", headers=headers)
    assert gone.status_code == 503
    assert gone.json()["code"] == "backend_unavailable"
