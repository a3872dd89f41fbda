"""Probe, scrape and stop real ``boltlink serve`` processes.

Each test owns what it breaks: a Redis server of its own, or a TCP proxy
in front of the shared Postgres that it can close and open again. The
machine's shared Redis and Postgres are never stopped.
"""

from __future__ import annotations

import contextlib
import http.server
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_serve import (
    POSTGRES_URL,
    Server,
    _boltlink,
    _clicks,
    _create_key,
    _create_link,
    _free_port,
    _Servers,
    _stop,
    _wait_clicks,
    production,
    servers,
)

__all__ = ["production", "servers"]

pytestmark = pytest.mark.slow

# -- things the tests stop and start ------------------------------------------


class _RedisServer:
    """A redis-server process of the test's own, on a free port."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail("own redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[_RedisServer]:
    """Yield a running redis-server that only this test uses."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = _RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class _Proxy:
    """Forward a local port to Postgres until closed; open it again at will."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone
            # would leave the port listening until it returns.
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# -- helpers ----------------------------------------------------------------------


def _ready(server: Server) -> httpx.Response:
    # The probe must answer within a second, whatever is down.
    return httpx.get(f"{server.base_url}/ready", timeout=1.0)


def _wait_ready(server: Server, status: int, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = _ready(server)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def _series(server: Server) -> dict[str, float]:
    """Return every sample of ``/metrics``, by series (name and labels)."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=5.0).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def _wait_sample(
    server: Server, series: str, expected: float, timeout: float = 10.0
) -> float:
    # Workers add their counts to the shared files once a second.
    deadline = time.monotonic() + timeout
    while (value := _series(server).get(series, 0.0)) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return value


# -- /health and /ready -------------------------------------------------------------


def test_ready_fails_fast_while_redis_is_down(
    tmp_path: Path, servers: _Servers, own_redis: _RedisServer
) -> None:
    settings = {
        "data_dir": str(tmp_path / "data"),
        "redis_url": own_redis.url,
        "inprocess_workers": "false",
        "access_log": "false",
    }
    server = servers.serve("serve", settings)
    assert _ready(server).status_code == 200

    own_redis.stop()
    down = _ready(server)
    assert down.status_code == 503, down.text
    assert down.json()["failed"] == ["redis"]
    assert httpx.get(f"{server.base_url}/health", timeout=1.0).status_code == 200

    own_redis.start()
    back = _wait_ready(server, 200)
    assert back.status_code == 200, back.text
    assert back.json()["checks"]["redis"] == "ok"


@pytest.mark.postgres
def test_ready_fails_fast_while_postgres_is_unreachable(
    tmp_path: Path, servers: _Servers, pg_schema: str, redis_settings: dict[str, str]
) -> None:
    proxy = _Proxy(("127.0.0.1", 5432))
    proxy.open()
    url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = {
        "data_dir": str(tmp_path / "data"),
        "database_url": url,
        "database_schema": pg_schema,
        "inprocess_workers": "false",
        "access_log": "false",
        **redis_settings,
    }
    try:
        _boltlink(tmp_path, settings, "migrate", "--no-analytics")
        server = servers.serve("serve", settings)
        assert _ready(server).status_code == 200

        proxy.close()
        for _ in range(3):
            down = _ready(server)
            assert down.status_code == 503, down.text
            assert down.json()["failed"] == ["store"]
        assert httpx.get(f"{server.base_url}/health", timeout=1.0).status_code == 200

        proxy.open()
        back = _wait_ready(server, 200)
        assert back.status_code == 200, back.text
    finally:
        servers.stop_all()
        proxy.close()


def test_ready_names_unreachable_clickhouse(
    tmp_path: Path, servers: _Servers, redis_settings: dict[str, str]
) -> None:
    settings = {
        "data_dir": str(tmp_path / "data"),
        "clickhouse_url": f"http://127.0.0.1:{_free_port()}",
        "inprocess_workers": "false",
        "access_log": "false",
        **redis_settings,
    }
    server = servers.serve("serve", settings)

    response = _ready(server)

    assert response.status_code == 503
    assert response.json()["failed"] == ["clickhouse"]


# -- metrics across workers -----------------------------------------------------------


def test_metrics_series_stay_bounded_and_sum_over_workers(
    tmp_path: Path, servers: _Servers, redis_settings: dict[str, str]
) -> None:
    settings = {
        "data_dir": str(tmp_path / "data"),
        "workers": "2",
        "inprocess_workers": "false",
        "access_log": "false",
        **redis_settings,
    }
    server = servers.serve("serve", settings)
    headers = {"Authorization": f"Bearer {_create_key(tmp_path, settings)}"}
    # A fresh connection per request, so both workers take requests.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, headers=headers, limits=fresh) as api:
        # Warm up: every kind of request once, so every series exists.
        code = str(_create_link(api)["code"])
        assert api.get(f"/{code}").status_code == 302
        assert api.get(f"/api/v1/links/{code}").status_code == 200
        assert api.get("/api/v1/links/nosuchcode").status_code == 404
        assert api.get("/api/v1/no/such").status_code == 404
        assert api.get("/nosuchcode").status_code == 404
        assert api.get("/no/such/path").status_code == 404
        assert _wait_sample(server, "boltlink_worker_processes", 2.0) == 2.0
        before = _series(server)

        for n in range(1000):
            junk = secrets.token_urlsafe(8)
            path = ("/{0}", "/{0}/x", "/api/v1/{0}", "/api/v1/links/{0}")[n % 4]
            assert api.get(path.format(junk)).status_code == 404
        codes = [
            str(_create_link(api, f"https://example.com/{n}")["code"])
            for n in range(500)
        ]
        for code in codes:
            assert api.get(f"/{code}").status_code == 302

    redirected = 'boltlink_redirects_total{outcome="redirected"}'
    assert _wait_sample(server, redirected, 501.0) == 501.0
    after = _series(server)
    assert set(after) == set(before)
    assert after['boltlink_redirects_total{outcome="not_found"}'] == 1 + 250
    created = (
        'boltlink_api_requests_total{method="POST",route="/api/v1/links",status="201"}'
    )
    assert after[created] == 501
    assert (
        after["boltlink_redirect_duration_seconds_count" + '{outcome="redirected"}']
        == 501
    )
    assert after["boltlink_worker_processes"] == 2


# -- graceful shutdown ----------------------------------------------------------------


class _Load:
    """Follow one short link from several threads until the server goes away."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answered: dict[int, int] = {}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=fresh, timeout=10.0) as client:
            while True:
                try:
                    status = client.get(self.url).status_code
                except httpx.ConnectError:
                    return  # refused: the server stopped accepting
                except httpx.ReadError as exc:
                    # A connection still in the kernel's listen backlog when
                    # the listener closes is reset with no response: the
                    # server never accepted it, so it read no request.
                    if "Connection reset by peer" in repr(exc):
                        return
                    with self._lock:
                        self.failures.append(repr(exc))
                    return
                except httpx.RemoteProtocolError as exc:
                    # Accepted just as the server stopped, and closed without
                    # an answer: like a reset, a request not served. The
                    # exact count after the restart shows no click of it
                    # was recorded.
                    if "without sending a response" in repr(exc):
                        return
                    with self._lock:
                        self.failures.append(repr(exc))
                    return
                except httpx.TransportError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                    return
                with self._lock:
                    self.answered[status] = self.answered.get(status, 0) + 1

    def count(self) -> int:
        with self._lock:
            return sum(self.answered.values())


@pytest.mark.postgres
def test_sigterm_under_load_answers_and_counts_every_redirect(
    tmp_path: Path, servers: _Servers, production: dict[str, str]
) -> None:
    settings = {**production, "workers": "2"}
    server = servers.serve("serve", settings)
    headers = {"Authorization": f"Bearer {_create_key(tmp_path, settings)}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as api:
        code = str(_create_link(api)["code"])
    load = _Load(f"{server.base_url}/{code}")
    load.start()
    deadline = time.monotonic() + 10
    while load.count() < 200 and time.monotonic() < deadline:
        time.sleep(0.05)

    assert _stop(server.process) == 0, server.tail()
    load.join()
    assert load.failures == []
    assert set(load.answered) == {302}
    sent = load.answered[302]
    assert sent >= 200
    assert "worker stopped" in server.tail()

    again = servers.serve("again", settings)
    with httpx.Client(base_url=again.base_url, headers=headers) as api:
        assert _wait_clicks(api, code, sent, timeout=30.0) == sent, again.tail()
        time.sleep(1.0)
        assert _clicks(api, code) == sent


# -- alert rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "target"), [("check", "alerts.yaml"), ("test", "alerts_test.yaml")]
)
def test_alert_rules_pass_promtool(action: str, target: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    folder = Path(__file__).parent.parent / "deploy" / "prometheus"

    result = subprocess.run(
        [promtool, action, "rules", target], capture_output=True, text=True, cwd=folder
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- traces over OTLP ---------------------------------------------------------------


class _Collector(http.server.ThreadingHTTPServer):
    """Take OTLP/HTTP trace exports; keep the span names they carry."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.spans: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CollectorHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers["content-length"]))
        export = ExportTraceServiceRequest.FromString(body)
        assert isinstance(self.server, _Collector)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans += [span.name for span in scope.spans]
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_tracing_exports_spans_over_otlp_http(
    tmp_path: Path,
    servers: _Servers,
    redis_settings: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = _Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    settings = {
        "data_dir": str(tmp_path / "data"),
        "tracing": "true",
        "inprocess_workers": "false",
        "access_log": "false",
        **redis_settings,
    }
    try:
        server = servers.serve("serve", settings)
        headers = {"Authorization": f"Bearer {_create_key(tmp_path, settings)}"}
        with httpx.Client(base_url=server.base_url, headers=headers) as api:
            code = str(_create_link(api)["code"])
            assert api.get(f"/{code}").status_code == 302

        deadline = time.monotonic() + 10
        while "redirect" not in collector.spans and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {"POST /api/v1/links", "redirect", "click.record"} <= set(
            collector.spans
        ), server.tail()
    finally:
        servers.stop_all()
        collector.shutdown()
        collector.server_close()


def test_consumer_process_serves_metrics_on_its_port(
    tmp_path: Path, servers: _Servers, redis_settings: dict[str, str]
) -> None:
    port = _free_port()
    settings = {
        "data_dir": str(tmp_path / "data"),
        "metrics_port": str(port),
        **redis_settings,
    }
    _boltlink(tmp_path, settings, "migrate", "--no-analytics")
    aggregate = servers.start("aggregate", settings, "aggregate")

    deadline = time.monotonic() + 20
    body = ""
    lag = 'boltlink_stream_group_lag_entries{group="aggregate",partition="0"}'
    while lag not in body:
        assert time.monotonic() < deadline, aggregate.tail()
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0).text
        except httpx.TransportError:
            time.sleep(0.1)

    assert "process_resident_memory_bytes" in body
    assert _stop(aggregate.process) == 0, aggregate.tail()
    assert "aggregate stopped" in aggregate.tail()
