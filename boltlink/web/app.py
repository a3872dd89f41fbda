"""Assemble the ASGI app: routes, the error table and the worker's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Match, Mount, Route, Router
from starlette.types import Scope

from boltlink import metrics
from boltlink.backends import connect_redis, open_store
from boltlink.clicks import stream_names
from boltlink.recorder import ClickRecorder
from boltlink.settings import Settings
from boltlink.web import api, stats
from boltlink.web.creates import LinkCreator
from boltlink.web.fastpath import RedirectApp
from boltlink.web.instrument import ApiInstrumentation
from boltlink.web.keycache import KeyCache
from boltlink.web.probes import Readiness, health, metrics_view, ready
from boltlink.web.problems import EXCEPTION_HANDLERS
from boltlink.web.redirect import redirect
from boltlink.web.resolver import LinkResolver
from boltlink.web.runtime import Runtime

__all__ = ["BackgroundJob", "build_app"]

logger = logging.getLogger("boltlink.api")

#: A job the app runs beside the requests for its whole life (the embedded
#: profile's aggregate and ingest loops); it gets the settings and a stop event.
BackgroundJob = Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]]


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
        # The CLI reaches a configured Redis, never the embedded Valkey of a
        # running serve: keys are cached only where a revocation is heard.
        keys=KeyCache(settings.cache_ttl, enabled=bool(settings.redis_url)),
    )
    recorder = ClickRecorder(
        redis,
        stream_names(settings.redis_prefix, settings.stream_partitions),
        maxlen=settings.stream_maxlen,
        buffer_size=settings.click_buffer_size,
        spill_dir=settings.data_dir / "spill",
    )
    await recorder.start()
    return Runtime(settings, store, redis, resolver, recorder, [pubsub_redis])


async def close_runtime(runtime: Runtime, timeout: float = 5.0) -> None:
    """Write pending clicks within ``timeout``, then close every client."""
    await runtime.recorder.stop(timeout)
    for client in [runtime.redis, *runtime.closers]:
        await client.aclose()
    await runtime.store.close()


def _pool_stats(runtime: Runtime) -> Callable[[], Any] | None:
    # The Postgres store's psycopg pool counts its own work; SQLite has no
    # pool to report on.
    stats: Callable[[], Any] | None = getattr(runtime.store, "pool_stats", None)
    return stats


def build_app(
    settings: Settings,
    jobs: Sequence[BackgroundJob] = (),
    *,
    freeze_heap: bool = False,
) -> Starlette:
    """Return the ASGI app for ``settings``, running ``jobs`` in its lifespan.

    With ``freeze_heap`` (a server worker: the process is the app's alone)
    everything alive once the app has started is moved out of the garbage
    collector's sight (:func:`gc.freeze`): the modules, the clients and the
    pools live as long as the worker, and a full collection walked them all,
    about 25 ms during which no redirect was answered (under load, one
    request in a hundred waited for one).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await open_runtime(settings)
        app.state.runtime = runtime
        app.state.readiness = Readiness(runtime)
        app.state.creator = LinkCreator(runtime.store, runtime.resolver)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(runtime.resolver.listen(), name="link-changes")]
        tasks += [asyncio.create_task(job(settings, stop)) for job in jobs]
        flusher = asyncio.create_task(
            metrics.run_flusher(_pool_stats(runtime)), name="metrics"
        )
        if freeze_heap:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await _shut_down(app, runtime, stop, tasks, settings.shutdown_timeout)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            metrics.mark_stopped(settings.metrics_dir)

    # No slash redirects: Starlette would build their Location from the
    # request's Host header, an open redirect; /code/ is simply not found.
    api_router = Router(api.routes + stats.routes, redirect_slashes=False)
    routes: list[Any] = [
        _create_route(),
        Route("/health", health, methods=["GET", "HEAD"]),
        Route("/ready", ready, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_view, methods=["GET"]),
        Mount("/api/v1", app=ApiInstrumentation(api_router, "/api/v1")),
        Route("/{code}", redirect, methods=["GET", "HEAD"]),
    ]
    # Cached redirects skip Starlette's middleware and routing: see
    # boltlink.web.fastpath, which answers them exactly as the view does.
    app = RedirectApp(
        routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan
    )
    app.router.redirect_slashes = False
    return app


class _ExactRoute(Route):
    """Match one method on one path by comparing strings, no pattern, no 405.

    Anything else falls through to the routes after it, unchanged.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Match fully, or not at all."""
        if (
            scope["type"] == "http"
            and scope["path"] == self.path
            and scope["method"] in self.methods  # type: ignore[operator]
        ):
            return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}
        return Match.NONE, {}


def _create_route() -> Route:
    # The busiest API route skips the mount and the API router: about 6% of
    # a create's Python time. Same endpoint, same metrics and traces (the
    # route's path is the full template), same error handlers.
    route = _ExactRoute("/api/v1/links", api.create_link, methods=["POST"])
    route.app = ApiInstrumentation(route.app, "")
    return route


async def _shut_down(
    app: Starlette,
    runtime: Runtime,
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
    timeout: float,
) -> None:
    """Stop within ``timeout``: clicks written, batches acknowledged, pools closed.

    The server has stopped accepting and finished its requests by now. The
    click buffer is written while the consumers finish their batch; what the
    consumers did not read yet stays in the stream for their next start.
    """
    deadline = time.monotonic() + timeout
    stop.set()
    app.state.readiness.close()
    await asyncio.gather(
        runtime.recorder.stop(timeout * 0.8),
        _finish(tasks, grace=timeout * 0.8),
    )
    await stats.close_analytics(app)
    await close_runtime(runtime, max(deadline - time.monotonic(), 0.0))
    logging.getLogger("boltlink.serve").info(
        "worker stopped in %.1f s", timeout - (deadline - time.monotonic())
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
