"""Test metrics, logs and traces inside one process, on real Redis and chDB."""

from __future__ import annotations

import io
import logging
import re
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from boltlink import analytics, metrics, tracing
from boltlink.analytics import AnalyticsStore
from boltlink.analytics.relay import RelayServer, relay_address
from boltlink.backends import connect_clickhouse
from boltlink.clicks import stream_names
from boltlink.logs import JsonFormatter, ProbeFilter, TextFormatter, bind_request
from boltlink.models import NewLink
from boltlink.settings import Settings
from boltlink.workers.consumer import StreamConsumer
from boltlink.workers.sinks import IngestSink

pytestmark = pytest.mark.redis


@pytest.fixture
def sqlite_settings(tmp_path: Path, redis_url: str, redis_prefix: str) -> Settings:
    """Return settings for an app on SQLite and the test Redis, consumers off."""
    return Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'links.sqlite3'}",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
        public_url="https://bl.test",
        inprocess_workers=False,
    )


@pytest.fixture
async def web(sqlite_settings: Settings, redis_client: Any) -> AsyncIterator[Any]:
    """Yield the running app and a client bound to it."""
    from boltlink.asgi import create_app
    from boltlink.store import migrate

    migrate(sqlite_settings.database_dsn, schema="public")
    app = create_app(sqlite_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
        async with httpx.AsyncClient(
            transport=transport, base_url="https://bl.test"
        ) as client:
            yield app, client


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Turn tracing on for the test, into an in-memory exporter."""
    exporter = InMemorySpanExporter()
    tracing.configure("test", exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def _sample(name: str, **labels: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- metrics ----------------------------------------------------------------------


def test_local_histogram_flush_matches_direct_observations() -> None:
    registry = CollectorRegistry()
    bounds = (0.001, 0.01)
    direct = Histogram("direct_seconds", "d", buckets=bounds, registry=registry)
    batched = Histogram("batched_seconds", "b", buckets=bounds, registry=registry)
    from prometheus_client import Counter

    count = Counter("batched_total", "c", registry=registry)
    local = metrics.LocalHistogram(batched, bounds, count)

    for value in (0.0005, 0.001, 0.002, 0.5, 0.5):
        direct.observe(value)
        local.observe(value)
    local.flush()

    def samples(prefix: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name.removeprefix(prefix), s.labels, s.value)
            for m in registry.collect()
            for s in m.samples
            if s.name.startswith(prefix) and not s.name.endswith("_created")
        ]

    assert samples("batched_seconds") == samples("direct_seconds")
    assert registry.get_sample_value("batched_total") == 5


async def test_redirect_outcomes_counted_by_outcome(web: Any) -> None:
    app, client = web
    store = app.state.runtime.store
    await store.create_link(NewLink(code="obs1", url="https://example.com/"))
    before = {
        o: _sample("boltlink_redirects_total", outcome=o)
        for o in ("redirected", "not_found")
    }

    for _ in range(3):
        assert (await client.get("/obs1")).status_code == 302
    assert (await client.get("/obs-missing")).status_code == 404
    assert (await client.get("/bad%20shape")).status_code == 404

    assert _sample("boltlink_redirects_total", outcome="redirected") == (
        before["redirected"] + 3
    )
    assert _sample("boltlink_redirects_total", outcome="not_found") == (
        before["not_found"] + 2
    )


async def test_api_requests_labelled_by_route_template(web: Any) -> None:
    _, client = web
    route = "/api/v1/links/{code}"
    before = _sample(
        "boltlink_api_requests_total", route=route, method="GET", status="401"
    )
    unmatched = _sample(
        "boltlink_api_requests_total", route="unmatched", method="other", status="404"
    )

    for code in ("aaa", "bbb", "ccc"):
        assert (await client.get(f"/api/v1/links/{code}")).status_code == 401
    assert (await client.request("BREW", "/api/v1/no/such/thing")).status_code == 404

    assert _sample(
        "boltlink_api_requests_total", route=route, method="GET", status="401"
    ) == (before + 3)
    assert _sample(
        "boltlink_api_requests_total", route="unmatched", method="other", status="404"
    ) == (unmatched + 1)
    body = (await client.get("/metrics")).text
    assert "aaa" not in body
    assert "/api/v1/no/such/thing" not in body


async def test_metrics_endpoint_serves_text_format(web: Any) -> None:
    _, client = web

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "boltlink_redirect_duration_seconds_bucket" in response.text
    assert 'le="0.0001"' in response.text


# -- /ready and the analytics relay ------------------------------------------------
# The app of ``web`` holds no chDB folder: it reads analytics through the
# relay, as a worker of ``serve`` does.


async def test_ready_reports_a_live_relay_holder_ok(
    web: Any, sqlite_settings: Settings
) -> None:
    _, client = web
    store = analytics.acquire(sqlite_settings)
    folder = sqlite_settings.clickhouse_dsn.removeprefix("chdb://")
    server = RelayServer(store, relay_address(folder))
    await server.start()
    try:
        response = await client.get("/ready")
    finally:
        await server.close()
        analytics.release(store)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"store": "ok", "redis": "ok", "clickhouse": "ok"},
        "failed": [],
        "degraded": [],
    }


async def test_ready_without_a_relay_holder_is_degraded_not_failed(
    web: Any,
) -> None:
    _, client = web

    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {
            "store": "ok",
            "redis": "ok",
            "clickhouse": "failed: BackendUnavailable",
        },
        "failed": [],
        "degraded": ["clickhouse"],
    }


async def test_ready_with_a_stopped_relay_holder_times_out_its_check(
    web: Any, tmp_path: Path
) -> None:
    _, client = web
    # Connected from the listen backlog, never answered: a SIGSTOPped holder.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(relay_address(str(tmp_path / "chdb")))
    listener.listen(8)
    try:
        response = await client.get("/ready")
    finally:
        listener.close()

    assert response.status_code == 200
    body = response.json()
    assert body["checks"]["clickhouse"] == "timed out after 0.5 s"
    assert (body["status"], body["failed"], body["degraded"]) == (
        "degraded",
        [],
        ["clickhouse"],
    )


# -- logs -------------------------------------------------------------------------


def _json_line(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


def test_json_log_line_carries_request_id() -> None:
    bind_request({"headers": [(b"x-request-id", b"req-42")]})
    try:
        record = logging.LogRecord(
            "boltlink.redirect", logging.WARNING, __file__, 1, "x %r", ("y",), None
        )
        line = _json_line(record)
    finally:
        bind_request(None)  # type: ignore[arg-type]

    assert {k: line[k] for k in ("level", "logger", "msg", "request_id")} == {
        "level": "WARNING",
        "logger": "boltlink.redirect",
        "msg": "x 'y'",
        "request_id": "req-42",
    }
    assert line["ts"].endswith("Z")


def test_json_log_line_carries_trace_id(spans: InMemorySpanExporter) -> None:
    with tracing.span("work"):
        ids = tracing.current_ids()
        record = logging.LogRecord(
            "boltlink.api", logging.INFO, __file__, 1, "done", (), None
        )
        line = _json_line(record)

    assert ids is not None
    assert (line["trace_id"], line["span_id"]) == ids


@pytest.mark.parametrize(
    ("path", "kept"), [("/health", False), ("/ready", False), ("/abc", True)]
)
def test_probe_filter_drops_probe_access_lines(path: str, kept: bool) -> None:
    record = logging.LogRecord(
        "granian.access", logging.INFO, __file__, 1, "%(path)s", ({"path": path},), None
    )

    assert ProbeFilter().filter(record) is kept


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/foo\r\nFAKE-LOG-LINE", "/foo\\r\\nFAKE-LOG-LINE"),
        ("/a\x00b", "/a\\x00b"),
        ("/tab\there", "/tab\\there"),
        ("/caf\u00e9", "/caf\u00e9"),
    ],
)
def test_text_log_line_escapes_control_characters(path: str, logged: str) -> None:
    record = logging.LogRecord(
        "granian.access", logging.INFO, __file__, 1, "GET %s 404", (path,), None
    )
    formatter = TextFormatter("%(name)s: %(message)s")

    assert formatter.format(record) == f"granian.access: GET {logged} 404"


def test_text_log_keeps_the_lines_of_a_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "boltlink.api", logging.ERROR, __file__, 1, "bad %r", ("x",), sys.exc_info()
        )

    lines = TextFormatter("%(message)s").format(record).splitlines()

    assert lines[0] == "bad 'x'"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_text_logs_without_tracing_have_no_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("boltlink.test-observability")
    logger.addHandler(handler)
    try:
        logger.warning("plain %d", 1)
    finally:
        logger.removeHandler(handler)

    line = orjson.loads(stream.getvalue())
    assert "trace_id" not in line
    assert line["msg"] == "plain 1"


# -- traces -----------------------------------------------------------------------


async def test_trace_runs_from_redirect_to_ingest_batch(
    web: Any, spans: InMemorySpanExporter, sqlite_settings: Settings, redis_client: Any
) -> None:
    app, client = web
    store = app.state.runtime.store
    link = await store.create_link(NewLink(code="traced", url="https://example.com/"))

    assert (await client.get("/traced")).status_code == 302
    analytics = AnalyticsStore(connect_clickhouse(sqlite_settings))
    analytics.migrate()
    try:
        consumer = StreamConsumer(
            redis_client,
            stream_names(sqlite_settings.redis_prefix, 1),
            sink=IngestSink(analytics),
            consumer="traced-0",
            prefix=sqlite_settings.redis_prefix,
            batch_size=100,
            block_ms=100,
        )
        await consumer.ensure_groups()
        assert await consumer.step() == 0  # the consumer's own backlog: empty
        assert await consumer.step() == 1
        assert await analytics.count_clicks(link.id) == 1
    finally:
        analytics.close()

    finished = {span.name: span for span in spans.get_finished_spans()}
    redirect, batch = finished["redirect"], finished["ingest batch"]
    assert batch.context.trace_id == redirect.context.trace_id
    assert batch.parent is not None
    assert batch.parent.span_id == redirect.context.span_id
    assert [link.context.span_id for link in batch.links] == [redirect.context.span_id]
    assert finished["click.record"].parent.span_id == redirect.context.span_id  # type: ignore[union-attr]
    assert redirect.attributes["boltlink.outcome"] == "redirected"  # type: ignore[index]


def test_tracing_off_hands_out_no_op_spans() -> None:
    assert tracing.active is False
    assert tracing.traceparent() == ""
    assert tracing.current_ids() is None
    with tracing.span("anything") as span:
        assert span is None


# -- names ------------------------------------------------------------------------

_ROOT = Path(__file__).parent.parent
_DOCUMENTED = re.compile(r"^\| `(boltlink_[a-z_]+)` \|", re.MULTILINE)
_USED = re.compile(r"\b(boltlink_[a-z_]+?)(?:_bucket|_count|_sum)?\b")


def _registered() -> set[str]:
    import boltlink.recorder
    import boltlink.web.resolver
    import boltlink.workers.metrics  # noqa: F401

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("boltlink_"):
            suffix = "_total" if family.type == "counter" else ""
            names.add(family.name + suffix)
    return names


def test_every_metric_is_documented_and_nothing_else() -> None:
    documented = set(
        _DOCUMENTED.findall((_ROOT / "docs" / "observability.md").read_text())
    )

    assert documented == _registered()


@pytest.mark.parametrize(
    "path", ["deploy/prometheus/alerts.yaml", "deploy/grafana/boltlink.json"]
)
def test_deploy_files_use_only_metrics_that_exist(path: str) -> None:
    used = set(_USED.findall((_ROOT / path).read_text()))

    assert used
    assert used <= _registered()
