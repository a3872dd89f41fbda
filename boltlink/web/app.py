"""Assemble the ASGI app: routes, the error table and the worker's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from boltlink.backends import connect_redis, open_store
from boltlink.clicks import stream_names
from boltlink.recorder import ClickRecorder
from boltlink.settings import Settings
from boltlink.web import api, stats
from boltlink.web.problems import EXCEPTION_HANDLERS
from boltlink.web.redirect import redirect
from boltlink.web.resolver import LinkResolver
from boltlink.web.runtime import Runtime

__all__ = ["BackgroundJob", "build_app"]

logger = logging.getLogger("boltlink.api")

#: A job the app runs beside the requests for its whole life (the embedded
#: profile's aggregate and ingest loops); it gets the settings and a stop event.
BackgroundJob = Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]]

_READY_TIMEOUT = 0.8


async def health(request: Request) -> Response:
    """Answer 200 while the process runs; checks no dependency."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """Answer 200 when the link store and Redis answer, 503 otherwise."""
    runtime: Runtime = request.app.state.runtime
    checks = {
        "store": runtime.store.ping(),
        "redis": runtime.redis.ping(),
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, _READY_TIMEOUT / len(checks))
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"unavailable: {type(exc).__name__}"
    status = 200 if all(v == "ok" for v in results.values()) else 503
    body = {"status": "ok" if status == 200 else "unavailable", "checks": results}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json"
    )


async def metrics(request: Request) -> Response:
    """Expose Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def open_runtime(settings: Settings) -> Runtime:
    """Open the store and Redis and start the worker's click recorder."""
    store = await open_store(settings)
    redis = connect_redis(settings)
    pubsub_redis = connect_redis(settings, socket_timeout=None)
    resolver = LinkResolver(
        store,
        redis,
        prefix=settings.redis_prefix,
        size=settings.cache_size,
        ttl=settings.cache_ttl,
        negative_ttl=settings.negative_cache_ttl,
        pubsub_redis=pubsub_redis,
    )
    recorder = ClickRecorder(
        redis,
        stream_names(settings.redis_prefix, settings.stream_partitions),
        maxlen=settings.stream_maxlen,
        buffer_size=settings.click_buffer_size,
    )
    await recorder.start()
    return Runtime(settings, store, redis, resolver, recorder, [pubsub_redis])


async def close_runtime(runtime: Runtime) -> None:
    """Write pending clicks, then close every client."""
    await runtime.recorder.stop()
    for client in [runtime.redis, *runtime.closers]:
        await client.aclose()
    await runtime.store.close()


def build_app(settings: Settings, jobs: Sequence[BackgroundJob] = ()) -> Starlette:
    """Return the ASGI app for ``settings``, running ``jobs`` in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await open_runtime(settings)
        app.state.runtime = runtime
        stop = asyncio.Event()
        tasks = [asyncio.create_task(runtime.resolver.listen(), name="link-changes")]
        tasks += [asyncio.create_task(job(settings, stop)) for job in jobs]
        try:
            yield
        finally:
            stop.set()
            await _finish(tasks)
            await stats.close_analytics(app)
            await close_runtime(runtime)

    routes: list[Any] = [
        Route("/health", health, methods=["GET", "HEAD"]),
        Route("/ready", ready, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Mount("/api/v1", routes=api.routes + stats.routes),
        Route("/{code}", redirect, methods=["GET", "HEAD"]),
    ]
    return Starlette(
        routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan
    )


async def _finish(tasks: list[asyncio.Task[None]], grace: float = 10.0) -> None:
    # Jobs watch the stop event and finish their batch; the cache listener
    # only ever stops by cancellation.
    tasks[0].cancel()
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "background job %s failed: %r", task.get_name(), task.exception()
            )
