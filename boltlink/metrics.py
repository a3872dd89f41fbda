"""Declare the web side's Prometheus metrics and render them for ``/metrics``.

``boltlink serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
before granian starts its workers, so every worker keeps its values in
memory-mapped files there and a scrape of any worker sums them all
(prometheus_client's multiprocess mode). Live gauges are summed over the
workers still running; counters keep what dead workers counted.

The redirect path does not touch those files per request: an mmap update
takes a lock and costs about 2 µs (5 µs for a histogram observation), more
than the rest of the instrumentation together. Its counts go to plain
integers (:class:`Tally`, :class:`LocalHistogram`) that :func:`flush` adds
to the shared values once a second and before every scrape.

Labels stay bounded: an outcome, a cache layer, a route template, a method
from a fixed set and a status code; never a code, a path, a key or an IP.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import glob
import logging
import os
import re
import resource
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from boltlink.processes import pid_alive

__all__ = [
    "API_REQUESTS",
    "API_SECONDS",
    "CACHE_LOOKUPS",
    "CONTENT_TYPE_LATEST",
    "REDIRECT_OUTCOMES",
    "LocalHistogram",
    "Tally",
    "api_method",
    "flush",
    "mark_stopped",
    "observe_pool",
    "observe_process",
    "redirect_timer",
    "render",
    "run_flusher",
]

logger = logging.getLogger("boltlink.metrics")

#: What a redirect request ended as; ``error`` is an unexpected exception.
REDIRECT_OUTCOMES = ("redirected", "not_found", "gone", "limited", "password", "error")

#: Latency buckets that resolve a cached redirect, well below a millisecond.
REDIRECT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REDIRECTS = Counter(
    "boltlink_redirects_total", "Redirect requests by outcome", ["outcome"]
)
REDIRECT_SECONDS = Histogram(
    "boltlink_redirect_duration_seconds",
    "Time from routing a redirect request to its response, by outcome",
    ["outcome"],
    buckets=REDIRECT_BUCKETS,
)
API_REQUESTS = Counter(
    "boltlink_api_requests_total",
    "API requests by route template, method and status",
    ["route", "method", "status"],
)
API_SECONDS = Histogram(
    "boltlink_api_request_duration_seconds",
    "Time to answer an API request, by route template and method",
    ["route", "method"],
    buckets=API_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "boltlink_link_cache_lookups_total",
    "Link lookups by the layer that answered",
    ["layer"],
)

_POOL_GAUGES = {
    "pool_size": Gauge(
        "boltlink_db_pool_connections",
        "Connections the link store pool holds, busy or idle",
        multiprocess_mode="livesum",
    ),
    "pool_available": Gauge(
        "boltlink_db_pool_idle_connections",
        "Idle connections in the link store pool",
        multiprocess_mode="livesum",
    ),
    "pool_max": Gauge(
        "boltlink_db_pool_max_connections",
        "Connections the link store pool may open at most",
        multiprocess_mode="livesum",
    ),
    "requests_waiting": Gauge(
        "boltlink_db_pool_waiting_requests",
        "Requests waiting for a link store connection",
        multiprocess_mode="livesum",
    ),
}
_POOL_COUNTERS = {
    "requests_num": Counter(
        "boltlink_db_pool_requests_total", "Connections asked of the link store pool"
    ),
    "requests_errors": Counter(
        "boltlink_db_pool_request_errors_total",
        "Connection requests that failed (timeout or queue full)",
    ),
    "connections_errors": Counter(
        "boltlink_db_pool_connection_errors_total",
        "Failed attempts of the pool to open a connection",
    ),
}
_POOL_WAIT = Counter(
    "boltlink_db_pool_wait_seconds_total", "Time spent waiting for a connection"
)

_PROCESS_RSS = Gauge(
    "boltlink_process_resident_memory_bytes",
    "Resident memory of the serve workers, summed",
    multiprocess_mode="livesum",
)
_PROCESS_FDS = Gauge(
    "boltlink_process_open_fds",
    "Open file descriptors of the serve workers, summed",
    multiprocess_mode="livesum",
)
_PROCESS_CPU = Counter(
    "boltlink_process_cpu_seconds_total", "CPU time of the serve workers, summed"
)
_WORKERS = Gauge(
    "boltlink_worker_processes",
    "Serve worker processes running",
    multiprocess_mode="livesum",
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Tally:
    """Count in a plain integer; :func:`flush` adds the count to a counter."""

    __slots__ = ("_child", "count")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.count = 0
        _LOCALS.append(self)

    def flush(self) -> None:
        """Add what was counted since the last flush to the shared counter."""
        count, self.count = self.count, 0
        if count:
            self._child.inc(count)


class LocalHistogram:
    """Observe into plain integers; :func:`flush` adds them to a histogram.

    Every flush also adds the observation count to ``counter``, so a
    request counter costs nothing on top of its latency histogram.
    """

    __slots__ = ("_bounds", "_child", "_counter", "_sum", "counts")

    def __init__(self, child: Any, bounds: tuple[float, ...], counter: Any) -> None:
        self._child = child
        self._counter = counter
        self._bounds = bounds
        # One slot per bucket plus +Inf; buckets are not cumulative here.
        self.counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        _LOCALS.append(self)

    def observe(self, seconds: float) -> None:
        """Count one observation of ``seconds``."""
        self.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def flush(self) -> None:
        """Add the observations since the last flush to the shared values."""
        counts, self.counts = self.counts, [0] * len(self.counts)
        total, self._sum = self._sum, 0.0
        observed = sum(counts)
        if not observed:
            return
        # NOTE: prometheus_client has no way to observe a value n times, so
        # the child's per-bucket values (not cumulative, one per bound plus
        # +Inf, as Histogram.observe fills them) are added to directly.
        for index, count in enumerate(counts):
            if count:
                self._child._buckets[index].inc(count)
        self._child._sum.inc(total)
        self._counter.inc(observed)


_LOCALS: list[Tally | LocalHistogram] = []

#: One pre-bound local histogram per redirect outcome.
redirect_timer: dict[str, LocalHistogram] = {
    outcome: LocalHistogram(
        REDIRECT_SECONDS.labels(outcome), REDIRECT_BUCKETS, REDIRECTS.labels(outcome)
    )
    for outcome in REDIRECT_OUTCOMES
}
for _layer in ("local", "redis", "store"):
    CACHE_LOOKUPS.labels(_layer)


def api_method(method: str) -> str:
    """Return ``method`` if it is a standard one, else ``other``."""
    return method if method in _METHODS else "other"


def flush() -> None:
    """Add every local count to the shared values."""
    for local in _LOCALS:
        local.flush()


def observe_pool(stats: Mapping[str, int]) -> None:
    """Record a psycopg pool's ``pop_stats()``: gauges set, counters added."""
    for key, gauge in _POOL_GAUGES.items():
        gauge.set(stats.get(key, 0))
    for key, counter in _POOL_COUNTERS.items():
        if stats.get(key):
            counter.inc(stats[key])
    if stats.get("requests_wait_ms"):
        _POOL_WAIT.inc(stats["requests_wait_ms"] / 1000)


class _ProcessProbe:
    """Read this process's CPU time, resident memory and open descriptors."""

    def __init__(self) -> None:
        self._cpu = 0.0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def observe(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        _PROCESS_CPU.inc(max(cpu - self._cpu, 0.0))
        self._cpu = cpu
        with contextlib.suppress(OSError):
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            _PROCESS_RSS.set(pages * self._page)
        with contextlib.suppress(OSError):
            _PROCESS_FDS.set(len(os.listdir("/proc/self/fd")))


_PROCESS = _ProcessProbe()


def observe_process() -> None:
    """Record this worker's CPU time, memory and descriptors."""
    _WORKERS.set(1)
    _PROCESS.observe()


async def run_flusher(
    pool_stats: Callable[[], Mapping[str, int]] | None = None,
    interval: float = 1.0,
) -> None:
    """Flush local counts and sample pool and process every ``interval``."""
    try:
        while True:
            _sample(pool_stats)
            await asyncio.sleep(interval)
    finally:
        _sample(pool_stats)


def _sample(pool_stats: Callable[[], Mapping[str, int]] | None) -> None:
    flush()
    observe_process()
    if pool_stats is not None:
        observe_pool(pool_stats())


def render(multiproc_dir: Path | None) -> bytes:
    """Return every metric in the text format, summed over workers if any."""
    flush()
    if multiproc_dir is None:
        return generate_latest(REGISTRY)
    _forget_dead_workers(multiproc_dir)
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=str(multiproc_dir)
    )
    return generate_latest(registry)


def mark_stopped(multiproc_dir: Path | None) -> None:
    """Drop this worker's live gauges, as it stops."""
    if multiproc_dir is not None:
        _multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            os.getpid(), str(multiproc_dir)
        )


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def _forget_dead_workers(multiproc_dir: Path) -> None:
    # A worker killed without its shutdown leaves its live gauges behind;
    # granian respawns it under a new pid, so drop the dead pid's files.
    for path in glob.glob(os.path.join(multiproc_dir, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(path)
        if match and not pid_alive(int(match.group(1))):
            _multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                int(match.group(1)), str(multiproc_dir)
            )
