"""Repeat a wrk run after a warm-up, take medians, and watch workers' memory."""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.servers import Served, rss_mib
from bench.wrk import WrkResult, run_wrk

__all__ = ["Measured", "Plan", "Row", "measure", "sample_rss"]


@dataclass(frozen=True)
class Plan:
    """How long and how often every benchmark runs."""

    seconds: float = 10.0
    warmup: float = 3.0
    repeats: int = 3
    connections: int = 64
    threads: int = 2
    pipeline_events: int = 1_000_000
    pipeline_repeats: int = 3
    cold_links: int = 24_000
    cold_seconds: float = 2.0
    #: Unknown codes per 404 flood run, each asked for many times.
    flood_codes: int = 500
    hot_links: int = 100


@dataclass
class Row:
    """One line of the result table: a benchmark's runs and their medians."""

    benchmark: str
    workers: int
    runs: list[WrkResult]
    #: The baseline's runs, made in turn with these under the same load.
    paired: Row | None = None
    notes: list[str] = field(default_factory=list)
    #: The machine's one-minute load average when the runs ended.
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    def median(self, pick: Callable[[WrkResult], float]) -> float:
        """Return the median of one figure over the runs."""
        return statistics.median(pick(run) for run in self.runs)

    @property
    def rps(self) -> float:
        """Return the median requests per second."""
        return self.median(lambda run: run.rps)

    @property
    def p50_ms(self) -> float:
        """Return the median of the runs' 50th percentile latency."""
        return self.median(lambda run: run.p50_ms)

    @property
    def p99_ms(self) -> float:
        """Return the median of the runs' 99th percentile latency."""
        return self.median(lambda run: run.p99_ms)

    @property
    def errors(self) -> int:
        """Return the failed requests of every measured run together."""
        return sum(run.errors for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """Return the row with its medians and every run, for the JSON file."""
        return {
            "benchmark": self.benchmark,
            "workers": self.workers,
            "load_average": round(self.load, 2),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": self.errors,
            "notes": self.notes,
            "runs": [run.to_dict() for run in self.runs],
            "paired_baseline": self.paired.to_dict() if self.paired else None,
        }


@dataclass
class Measured:
    """The warm-up run, if any, and the measured runs of one server."""

    warmup: WrkResult | None
    runs: list[WrkResult] = field(default_factory=list)

    @property
    def every_run(self) -> list[WrkResult]:
        """Return every run wrk made, the warm-up first."""
        return ([self.warmup] if self.warmup else []) + self.runs


def measure(
    targets: list[Served],
    script: str,
    plan: Plan,
    *,
    env: Callable[[int], dict[str, str]] | None = None,
    warmup: bool = True,
    seconds: float | None = None,
) -> list[Measured]:
    """Warm each target up, then make ``plan.repeats`` runs on each in turn.

    Runs alternate between the targets (BoltLink, then its baseline, then
    BoltLink again...), so on a shared machine both see the same noise.
    ``env`` gives the script's variables for each run by its number (the
    warm-up is run 0), so a run can get codes no other run used.
    """

    def run(target: Served, number: int, length: float) -> WrkResult:
        return run_wrk(
            target.url,
            script,
            seconds=length,
            connections=plan.connections,
            threads=plan.threads,
            env=env(number) if env else None,
        )

    measured = [
        Measured(run(target, 0, plan.warmup) if warmup else None) for target in targets
    ]
    for number in range(1, plan.repeats + 1):
        for target, done in zip(targets, measured, strict=True):
            done.runs.append(run(target, number, seconds or plan.seconds))
    return measured


@dataclass
class RssSample:
    """The largest resident set seen per worker while sampling."""

    peak_mib: dict[int, float] = field(default_factory=dict)


@contextmanager
def sample_rss(pids: list[int], interval: float = 0.5) -> Iterator[RssSample]:
    """Record each worker's peak VmRSS while the block runs."""
    sample = RssSample()
    finished = threading.Event()

    def poll() -> None:
        while True:
            for pid in pids:
                rss = rss_mib(pid)
                if rss is not None:
                    sample.peak_mib[pid] = max(rss, sample.peak_mib.get(pid, 0.0))
            if finished.wait(interval):
                return

    watcher = threading.Thread(target=poll, name="rss-sampler", daemon=True)
    watcher.start()
    try:
        yield sample
    finally:
        finished.set()
        watcher.join()
