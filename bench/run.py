"""Run the BoltLink benchmarks: ``python -m bench.run [--quick] [--only NAME]``."""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/run.py` puts bench/ itself on the path; the harness is the
# `bench` package, so put the repository there instead.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import dataclasses
import functools
import logging
import time
import traceback
from collections.abc import Callable

import psycopg
import redis

from bench.analytics import analytics_bench
from bench.baselines import run_baselines
from bench.create import create_links_bench
from bench.measure import Plan
from bench.pipeline import pipeline_bench
from bench.redirects import redirect_cold, redirect_embedded, redirect_hot
from bench.report import render
from bench.results import Results
from bench.sandbox import DATABASE_URL, REDIS_URL
from bench.wrk import WrkError, install_wrk, require_wrk

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"

FULL = Plan()
QUICK = Plan(
    seconds=3.0,
    warmup=1.0,
    repeats=1,
    pipeline_events=100_000,
    pipeline_repeats=1,
    cold_links=5_000,
    cold_seconds=1.0,
)

Bench = Callable[[Plan, Results], None]


def _hot(plan: Plan, results: Results) -> None:
    for workers in (1, 2):
        redirect_hot(plan, workers, results)


def _cold(plan: Plan, results: Results) -> None:
    redirect_cold(plan, 2, results)


#: Every benchmark by name, with the worker counts whose baselines it needs.
BENCHMARKS: dict[str, tuple[Bench, tuple[int, ...]]] = {
    "hot": (_hot, (1, 2)),
    "cold": (_cold, (2,)),
    "embedded": (redirect_embedded, (1,)),
    "create": (create_links_bench, ()),
    "pipeline": (pipeline_bench, ()),
    "analytics": (analytics_bench, ()),
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split(":")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run: 3 s runs, 1 each"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*BENCHMARKS, "baseline"],
        metavar="NAME",
        help=f"run only this benchmark, repeatable: {', '.join(BENCHMARKS)}, "
        "baseline (the baselines a benchmark needs always run)",
    )
    parser.add_argument("--seconds", type=float, help="length of a measured run")
    parser.add_argument("--repeats", type=int, help="measured runs per figure")
    parser.add_argument("--pipeline-events", type=int, help="events per stream fill")
    parser.add_argument(
        "--install-wrk", action="store_true", help="apt-get install wrk if missing"
    )
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    changes = {
        "seconds": args.seconds,
        "repeats": args.repeats,
        "pipeline_events": args.pipeline_events,
    }
    return dataclasses.replace(plan, **{k: v for k, v in changes.items() if v})


def _check_backends() -> None:
    try:
        psycopg.connect(DATABASE_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        raise SystemExit(f"postgres unreachable at {DATABASE_URL}: {exc}") from None
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except redis.RedisError as exc:
        raise SystemExit(f"redis unreachable at {REDIS_URL}: {exc}") from None


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _timed(name: str, bench: Callable[[], None], failures: list[str]) -> None:
    started = time.monotonic()
    _say(f"{name}: running")
    try:
        bench()
    except Exception as exc:
        failures.append(f"{name}: {exc}")
        _say(f"{name}: failed: {exc}")
        traceback.print_exc(file=sys.stderr)
        return
    _say(f"{name}: done in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, write the results, print the table."""
    args = _arguments(argv)
    try:
        if args.install_wrk and not _has_wrk():
            install_wrk()
        require_wrk()
    except WrkError as exc:
        raise SystemExit(str(exc)) from None
    _check_backends()
    logging.basicConfig(level=logging.WARNING)

    plan = _plan(args)
    names = args.only or [*BENCHMARKS, "baseline"]
    results = Results(plan)
    failures: list[str] = []
    workers = {w for name in names if name in BENCHMARKS for w in BENCHMARKS[name][1]}
    if "baseline" in names:
        workers |= {1, 2}
    if workers:
        _timed("baseline", lambda: run_baselines(plan, workers, results), failures)
    for name in (n for n in BENCHMARKS if n in names):
        bench = BENCHMARKS[name][0]
        _timed(name, functools.partial(bench, plan, results), failures)

    table = render(results)
    path = results.write_json(RESULTS)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    _say(f"results in {path} and {RESULTS / 'latest.md'}")
    for failure in failures:
        _say(f"FAILED {failure}")
    return 1 if failures else 0


def _has_wrk() -> bool:
    try:
        require_wrk()
    except WrkError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
