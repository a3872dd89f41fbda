"""Benchmark ``GET /{code}``: hot, cold, unknown codes, and the embedded profile.

Every redirect benchmark of the production profile runs ``boltlink serve``
on Postgres and Redis with ``boltlink aggregate`` beside it, as production
does, and ends by checking that every answered redirect was counted once.
The bare Starlette baseline with the same workers runs beside it, and the
two are measured in turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.baselines import baseline_server
from bench.measure import Measured, Plan, Row, measure, sample_rss
from bench.results import BASELINE_STARLETTE, Memory, Results, StoreReads
from bench.sandbox import Sandbox
from bench.seed import create_key, create_links, drain_clicks, new_codes
from bench.servers import (
    Served,
    boltlink_command,
    free_port,
    rss_mib,
    serve,
    spawn,
    stop,
)
from bench.wrk import WrkResult

__all__ = ["boltlink_server", "redirect_cold", "redirect_embedded", "redirect_hot"]

_STATS_IDLE_SECONDS = 11.0


@dataclass
class BoltLinkServer:
    """A BoltLink server ready for load, its API key, sandbox and baseline."""

    served: Served
    baseline: Served | None
    key: str
    box: Sandbox
    production: bool
    workers: int

    @property
    def targets(self) -> list[Served]:
        """Return BoltLink, then its baseline: the servers to load in turn."""
        assert self.baseline is not None, "served without its baseline"
        return [self.served, self.baseline]

    def codes_file(self, codes: list[str], name: str) -> Path:
        """Write ``codes`` one a line to a file in the sandbox; return it."""
        path = self.box.folder / f"{name}.txt"
        path.write_text("\n".join(codes) + "\n")
        return path

    def tally(self, name: str, runs: list[WrkResult], results: Results) -> None:
        """Wait for the consumers, then record the click accounting."""
        connections = results.plan.connections
        results.tallies[name] = drain_clicks(
            self.served.url,
            self.key,
            answered=sum(run.answered_ok for run in runs),
            slack=connections * len(runs),
            prefix=self.box.prefix if self.production else None,
        )


@contextlib.contextmanager
def boltlink_server(
    name: str, workers: int, *, production: bool = True, baseline: bool = True
) -> Iterator[BoltLinkServer]:
    """Serve BoltLink (and the Starlette baseline) in a sandbox of their own."""
    port = free_port()
    with Sandbox(name) as box, contextlib.ExitStack() as stack:
        settings = {"BOLTLINK_PORT": str(port), "BOLTLINK_WORKERS": str(workers)}
        if production:
            env = box.production_env(**settings)
            box.migrate(env)
            aggregator = spawn(boltlink_command("aggregate"), env, box.log("aggregate"))
            stack.callback(stop, aggregator)
        else:
            env = box.embedded_env(**settings)
        key = create_key(env)
        log = box.log("serve")
        served = stack.enter_context(
            serve(boltlink_command("serve"), env, port=port, log=log, workers=workers)
        )
        paired = None
        if baseline:
            paired = stack.enter_context(baseline_server(box, workers))
        yield BoltLinkServer(served, paired, key, box, production, workers)


def _memory(
    server: str, workers: int, rest: list[float], load: dict[int, float]
) -> Memory:
    return Memory(
        server,
        workers,
        [round(m, 1) for m in rest],
        [round(m, 1) for m in load.values()],
    )


def redirect_hot(plan: Plan, workers: int, results: Results) -> None:
    """Cycle over a hundred links on the production profile."""
    name = "redirect hot"
    with boltlink_server(f"hot{workers}", workers) as server:
        codes = new_codes(plan.hot_links, "h")
        create_links(server.served.url, server.key, codes)
        path = server.codes_file(codes, "hot")
        pids = server.served.worker_pids()
        rest = [m for m in map(rss_mib, pids) if m is not None]
        with sample_rss(pids) as load:
            measured, base = measure(
                server.targets,
                "cycle.lua",
                plan,
                env=lambda _: {"BENCH_CODES": str(path)},
            )
        results.rows.append(_row(name, workers, measured, base))
        results.memory.append(_memory("production", workers, rest, load.peak_mib))
        server.tally(f"{name} {workers}w", measured.every_run, results)


def redirect_embedded(plan: Plan, results: Results) -> None:
    """Cycle over a hundred links on the embedded profile, one worker."""
    name = "redirect embedded"
    with boltlink_server("embedded", 1, production=False) as server:
        codes = new_codes(plan.hot_links, "e")
        create_links(server.served.url, server.key, codes)
        path = server.codes_file(codes, "hot")
        pids = server.served.worker_pids()
        children = server.served.consumer_pids()
        rest = [m for m in map(rss_mib, pids) if m is not None]
        rest_children = [m for m in map(rss_mib, children) if m is not None]
        with sample_rss(pids) as load, sample_rss(children) as child_load:
            measured, base = measure(
                server.targets,
                "cycle.lua",
                plan,
                env=lambda _: {"BENCH_CODES": str(path)},
            )
        results.rows.append(_row(name, 1, measured, base))
        results.memory.append(_memory("embedded", 1, rest, load.peak_mib))
        if children:
            results.memory.append(
                _memory(
                    "embedded consumer process",
                    1,
                    rest_children,
                    child_load.peak_mib,
                )
            )
        server.tally(f"{name} 1w", measured.every_run, results)


def redirect_cold(plan: Plan, workers: int, results: Results) -> None:
    """Request never-requested codes once each, then flood unknown codes."""
    with boltlink_server(f"cold{workers}", workers) as server:
        hot = new_codes(plan.hot_links, "h")
        cold = new_codes(plan.cold_links, "c")
        create_links(server.served.url, server.key, hot)
        # Straight into Postgres: the API would put each link in Redis too,
        # and a cold code must be in no cache at all.
        server.box.insert_links(cold)
        hot_path = server.codes_file(hot, "hot")

        # Warm the workers up on links that the cold runs never ask for.
        warm, _ = measure(
            server.targets,
            "cycle.lua",
            dataclasses.replace(plan, repeats=0),
            env=lambda _: {"BENCH_CODES": str(hot_path)},
        )
        cold_runs = _cold_runs(server, cold, plan, results)
        _flood(server, plan, workers, results)
        server.tally(f"redirect cold {workers}w", warm.every_run + cold_runs, results)


def _cold_runs(
    server: BoltLinkServer, cold: list[str], plan: Plan, results: Results
) -> list[WrkResult]:
    slices = _slices(server, cold, plan.repeats)
    before = _settled_reads(server.box, after_load=False)
    measured, base = measure(
        server.targets,
        "once.lua",
        plan,
        env=lambda n: {"BENCH_CODES": str(slices[n - 1])},
        warmup=False,
        seconds=plan.cold_seconds,
    )
    reads = _settled_reads(server.box) - before
    row = _row("redirect cold", server.workers, measured, base)
    if any(run.wrapped for run in measured.runs):
        row.notes.append("ran out of cold codes: some requests were warm")
    results.rows.append(row)
    # Proof that the runs were cold: about one store read per request.
    row.notes.append(f"{reads:,} postgres reads")
    return measured.runs


def _flood(server: BoltLinkServer, plan: Plan, workers: int, results: Results) -> None:
    # Each run cycles over its own unknown codes, each asked for once, one
    # at a time, just before the run: exactly one store read per code. Any
    # read during the runs is a query after the first miss.
    one_run = dataclasses.replace(plan, repeats=1)
    flood, flood_base = Measured(None), Measured(None)
    before = _settled_reads(server.box, after_load=False)
    for number in range(plan.repeats):
        codes = new_codes(plan.flood_codes, "nf")
        path = server.codes_file(codes, f"flood-{number}")
        _first_misses(server.served.url, codes)
        run, base = measure(
            server.targets,
            "notfound.lua",
            one_run,
            env=lambda _, path=path: {"BENCH_CODES": str(path)},  # type: ignore[misc]
            warmup=False,
        )
        flood.runs += run.runs
        flood_base.runs += base.runs
    reads = _settled_reads(server.box) - before
    results.rows.append(_flood_row(flood, flood_base, workers))
    codes_asked = plan.flood_codes * plan.repeats
    results.store_reads["redirect 404 flood"] = StoreReads(codes_asked, reads)


def _first_misses(url: str, codes: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for code in codes:
            status = client.get(f"/{code}").status_code
            if status != 404:
                raise RuntimeError(f"unknown code {code!r} answered {status}")


def _settled_reads(box: Sandbox, *, after_load: bool = True) -> int:
    # Postgres publishes a backend's statistics some time after its
    # transactions end: at most once a second while busy, within ten seconds
    # once idle (PGSTAT_IDLE_INTERVAL). Wait that long, then until it is still.
    if after_load:
        time.sleep(_STATS_IDLE_SECONDS)
    reads, since = box.code_lookups(), time.monotonic()
    while time.monotonic() - since < 2.0:
        time.sleep(0.5)
        now = box.code_lookups()
        if now != reads:
            reads, since = now, time.monotonic()
    return reads


def _slices(server: BoltLinkServer, cold: list[str], count: int) -> list[Path]:
    # Each run gets its own slice of codes, so every request is a first one.
    size = len(cold) // count
    return [
        server.codes_file(cold[n * size : (n + 1) * size], f"cold-{n}")
        for n in range(count)
    ]


def _row(name: str, workers: int, measured: Measured, base: Measured) -> Row:
    paired = Row(BASELINE_STARLETTE, workers, base.runs)
    return Row(name, workers, measured.runs, paired)


def _flood_row(flood: Measured, base: Measured, workers: int) -> Row:
    # Every answer is a 404 here: wrk counts them as status errors, so the
    # errors that matter are the script's "unexpected" answers and sockets.
    runs = [
        WrkResult(**{**vars(run), "status_errors": run.unexpected})
        for run in flood.runs
    ]
    return _row("redirect 404 flood", workers, Measured(None, runs), base)
