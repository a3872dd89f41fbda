"""Hold what one bench run measured, and write it as JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measure import Plan, Row
from bench.seed import Tally

__all__ = ["Memory", "PipelineRow", "Results", "StoreReads", "machine"]

BASELINE_STARLETTE = "baseline starlette"
BASELINE_RAW = "baseline raw asgi"


@dataclass(frozen=True)
class Memory:
    """Resident memory of a server's workers, at rest and under load."""

    server: str
    workers: int
    rest_mib: list[float]
    load_mib: list[float]


@dataclass(frozen=True)
class PipelineRow:
    """How fast one consumer setup emptied a pre-filled click stream."""

    sink: str
    consumers: int
    events: int
    seconds: list[float]
    #: Consumer processes the consumers were spread over (one each, or
    #: all of them as tasks of one process).
    processes: int = 1

    @property
    def median_seconds(self) -> float:
        """Return the median time to drain the stream."""
        ordered = sorted(self.seconds)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) / 2

    @property
    def events_per_second(self) -> float:
        """Return events per second over the median drain time."""
        return self.events / self.median_seconds

    @property
    def per_consumer(self) -> float:
        """Return events per second per consumer."""
        return self.events_per_second / self.consumers


@dataclass(frozen=True)
class StoreReads:
    """How often a benchmark's codes were read from Postgres by code."""

    codes: int
    reads: int

    @property
    def after_first_miss(self) -> int:
        """Return the reads beyond one per code: queries a cache should stop."""
        return max(0, self.reads - self.codes)


@dataclass
class Results:
    """Everything one run of the bench measured."""

    plan: Plan
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    rows: list[Row] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=dict)
    memory: list[Memory] = field(default_factory=list)
    pipeline: list[PipelineRow] = field(default_factory=list)
    store_reads: dict[str, StoreReads] = field(default_factory=dict)

    def find(self, benchmark: str, workers: int) -> Row | None:
        """Return the row of ``benchmark`` with ``workers``, if it ran."""
        for row in self.rows:
            if row.benchmark == benchmark and row.workers == workers:
                return row
        return None

    def write_json(self, folder: Path) -> Path:
        """Write ``<folder>/<timestamp>.json`` and return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.started:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def to_dict(self) -> dict[str, Any]:
        """Return every figure, run by run, with the machine and the plan."""
        rows = []
        for row in self.rows:
            entry = row.to_dict()
            base = row.paired
            if base is not None:
                entry["ratio_rps"] = round(row.rps / base.rps, 3)
                entry["ratio_p99"] = round(row.p99_ms / base.p99_ms, 3)
            rows.append(entry)
        return {
            "started": self.started.isoformat(),
            "machine": machine(),
            "plan": asdict(self.plan),
            "rows": rows,
            "tallies": {name: t.to_dict() for name, t in self.tallies.items()},
            "memory": [asdict(m) for m in self.memory],
            "store_reads": {
                name: {**asdict(r), "after_first_miss": r.after_first_miss}
                for name, r in self.store_reads.items()
            },
            "pipeline": [
                {**asdict(p), "events_per_second": round(p.events_per_second)}
                for p in self.pipeline
            ],
        }


def machine() -> dict[str, Any]:
    """Describe the machine the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (OSError, ValueError):
        memory_gib = 0.0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **{name: _version(name) for name in _PACKAGES},
    }


# The versions that shape the figures: the server, the framework, the loop
# and the clients of the redirect path.
_PACKAGES = ("granian", "starlette", "uvloop", "redis", "psycopg", "chdb")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""
