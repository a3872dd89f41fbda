"""Answer the probes: ``/health`` (alive), ``/ready`` (dependencies), ``/metrics``.

``/ready`` checks the link store, Redis and ClickHouse at the same time,
each within :data:`CHECK_TIMEOUT`, so it answers well within a second
even when a dependency hangs. A check still running when the next probe
arrives is joined, not started again, so a stuck dependency never piles
up connections.

With chDB, a process that holds the folder reports ``clickhouse`` as
``embedded``, unchecked. A process that reads analytics through the relay
asks the holder for a cheap acknowledgement instead, and a failure there
is *degraded*, not *failed*: it is named in the body but ``/ready`` stays
200, since redirects and the links API do not need analytics and taking
the process out of a load balancer would stop them for a stats outage.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from boltlink import metrics
from boltlink.analytics.relay import (
    RelayedStore,
    chdb_folder,
    reads_through_relay,
    relay_address,
)
from boltlink.web.runtime import Runtime

__all__ = ["CHECK_TIMEOUT", "Readiness", "health", "metrics_view", "ready"]

#: The most one dependency check may take.
CHECK_TIMEOUT = 0.5

_HEALTHY = b'{"status":"ok"}'


async def health(request: Request) -> Response:
    """Answer 200 while the process runs; checks no dependency."""
    return Response(_HEALTHY, media_type="application/json")


async def ready(request: Request) -> Response:
    """Answer 200 when every needed dependency answers, else 503 naming it.

    A failing optional dependency (the analytics relay) is listed under
    ``degraded`` and leaves the status 200.
    """
    readiness: Readiness = request.app.state.readiness
    results = await readiness.check()
    broken = sorted(name for name, result in results.items() if not _passed(result))
    failed = [name for name in broken if name not in readiness.optional]
    degraded = [name for name in broken if name in readiness.optional]
    status = "unavailable" if failed else "degraded" if degraded else "ok"
    body = {
        "status": status,
        "checks": results,
        "failed": failed,
        "degraded": degraded,
    }
    return Response(
        orjson.dumps(body),
        status_code=503 if failed else 200,
        media_type="application/json",
    )


async def metrics_view(request: Request) -> Response:
    """Expose Prometheus metrics, summed over this server's workers."""
    runtime: Runtime = request.app.state.runtime
    body = metrics.render(runtime.settings.metrics_dir)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()


def _passed(result: str) -> bool:
    return result in {"ok", "embedded"}


class Readiness:
    """Run the dependency checks of one worker, at most one of each at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self._checks: dict[str, Callable[[], Awaitable[object]]] = {
            "store": runtime.store.ping,
            "redis": runtime.redis.ping,
        }
        #: Checks whose failure degrades the process rather than failing it.
        self.optional: frozenset[str] = frozenset()
        settings = runtime.settings
        dsn = settings.clickhouse_dsn
        self._embedded_clickhouse = False
        if not dsn.startswith("chdb:"):
            self._checks["clickhouse"] = lambda: ping_clickhouse(dsn)
        elif reads_through_relay(settings):
            holder = RelayedStore(relay_address(chdb_folder(settings)))
            self._checks["clickhouse"] = holder.ping_holder
            self.optional = frozenset({"clickhouse"})
        else:
            self._embedded_clickhouse = True
        self._running: dict[str, asyncio.Task[object]] = {}

    async def check(self) -> dict[str, str]:
        """Return each dependency's state: ``ok``, ``embedded`` or the failure."""
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._check_one(n) for n in names))
        results = dict(zip(names, outcomes, strict=True))
        if self._embedded_clickhouse:
            results["clickhouse"] = "embedded"
        return results

    async def _check_one(self, name: str) -> str:
        task = self._running.get(name)
        if task is None or task.done():
            task = asyncio.ensure_future(self._checks[name]())
            # A check that outlives its probe and then fails is read by the
            # next probe, or by no one: its error must not be reported as
            # never retrieved.
            task.add_done_callback(_retrieve)
            self._running[name] = task
        try:
            # Shielded: a probe that gives up leaves the check to finish for
            # the next probe, instead of cancelling it half-way.
            await asyncio.wait_for(asyncio.shield(task), CHECK_TIMEOUT)
        except TimeoutError:
            return f"timed out after {CHECK_TIMEOUT} s"
        except Exception as exc:
            return f"failed: {type(exc).__name__}"
        return "ok"

    def close(self) -> None:
        """Cancel checks still running."""
        for task in self._running.values():
            task.cancel()


async def ping_clickhouse(dsn: str) -> None:
    """Ask a ClickHouse server's HTTP ``/ping``; raise unless it answers 200."""
    parts = urlsplit(dsn)
    secure = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (8443 if secure else 8123)
    context = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        writer.write(
            f"GET /ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
    fields = status_line.split()
    if len(fields) < 2 or fields[1] != b"200":
        raise ConnectionError(f"clickhouse /ping answered {status_line[:64]!r}")
