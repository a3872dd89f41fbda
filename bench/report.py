"""Render a bench run as Markdown: figures, click accounting and targets."""

from __future__ import annotations

from collections.abc import Iterator

from bench.measure import Row
from bench.results import BASELINE_RAW, PipelineRow, Results

__all__ = ["render"]


def render(results: Results) -> str:
    """Return the Markdown tables of ``results``, targets last."""
    parts = [_header(results)]
    if results.rows:
        parts.append(_table(_http_table(results)))
    if results.pipeline:
        parts.append(_table(_pipeline_table(results)))
    if results.memory:
        parts.append(_table(_memory_table(results)))
    if results.tallies:
        parts.append(_table(_tally_table(results)))
    if results.store_reads:
        parts.append(_table(_reads_table(results)))
    targets = list(_targets(results))
    if targets:
        parts.append(_table([["target", "measured", "met"], *targets]))
    return "\n\n".join(parts) + "\n"


def _header(results: Results) -> str:
    plan = results.plan
    return (
        f"BoltLink bench, {results.started:%Y-%m-%d %H:%M} UTC. "
        f"wrk {plan.threads} threads, {plan.connections} connections, "
        f"{plan.repeats} runs of {plan.seconds:g} s after a {plan.warmup:g} s "
        f"warm-up (cold: {plan.cold_seconds:g} s runs); figures are medians."
    )


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |"]
    lines.append("|" + "|".join(" --- " for _ in rows[0]) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _ratio(row: Row, base: Row | None, pick: str) -> str:
    if base is None:
        return ""
    value = getattr(row, pick) / getattr(base, pick)
    return f"{value:.2f}x"


def _http_table(results: Results) -> list[list[str]]:
    rows = [
        [
            "benchmark",
            "workers",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "baseline req/s",
            "baseline p99 ms",
            "vs baseline req/s",
            "vs baseline p99",
            "vs raw ASGI req/s",
            "load avg",
        ]
    ]
    for row in results.rows:
        base = row.paired
        raw = results.find(BASELINE_RAW, row.workers) if base else None
        name = row.benchmark + "".join(f" ({note})" for note in row.notes)
        rows.append(
            [
                name,
                str(row.workers),
                f"{row.rps:,.0f}",
                f"{row.p50_ms:.2f}",
                f"{row.p99_ms:.2f}",
                str(row.errors),
                f"{base.rps:,.0f}" if base else "",
                f"{base.p99_ms:.2f}" if base else "",
                _ratio(row, base, "rps"),
                _ratio(row, base, "p99_ms"),
                _ratio(row, raw, "rps"),
                f"{row.load:.1f}",
            ]
        )
    return rows


def _consumers(p: PipelineRow) -> str:
    if p.consumers == 1:
        return "1"
    if p.processes == 1:
        return f"{p.consumers} in one process"
    return f"{p.consumers}, a process each"


def _pipeline_table(results: Results) -> list[list[str]]:
    rows = [
        ["pipeline sink", "consumers", "events", "seconds", "events/s", "per consumer"]
    ]
    for p in results.pipeline:
        rows.append(
            [
                p.sink,
                _consumers(p),
                f"{p.events:,}",
                f"{p.median_seconds:.1f}",
                f"{p.events_per_second:,.0f}",
                f"{p.per_consumer:,.0f}",
            ]
        )
    return rows


def _memory_table(results: Results) -> list[list[str]]:
    rows = [["memory", "workers", "RSS at rest, MiB", "RSS under load (peak), MiB"]]
    for m in results.memory:
        rows.append(
            [
                m.server if " " in m.server else f"{m.server} worker",
                str(m.workers),
                " / ".join(f"{v:.0f}" for v in m.rest_mib),
                " / ".join(f"{v:.0f}" for v in m.load_mib),
            ]
        )
    return rows


def _tally_table(results: Results) -> list[list[str]]:
    rows = [["clicks", "answered / expected", "in stream", "counted", "exact"]]
    for name, tally in results.tallies.items():
        rows.append(
            [
                name,
                f"{tally.answered:,}",
                "" if tally.recorded is None else f"{tally.recorded:,}",
                f"{tally.counted:,}",
                "yes" if tally.exact else "**no**",
            ]
        )
    return rows


def _reads_table(results: Results) -> list[list[str]]:
    rows = [["postgres reads by code", "distinct codes", "reads", "after first miss"]]
    for name, reads in results.store_reads.items():
        rows.append(
            [
                name,
                f"{reads.codes:,}",
                f"{reads.reads:,}",
                f"{reads.after_first_miss:,}",
            ]
        )
    return rows


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _targets(results: Results) -> Iterator[list[str]]:
    hot = results.find("redirect hot", 2)
    base2 = hot.paired if hot else None
    if hot and base2:
        ratio = hot.rps / base2.rps
        yield [
            "redirect hot, 2 workers: >= 0.7x baseline req/s",
            f"{ratio:.2f}x",
            _met(ratio >= 0.7),
        ]
        p99 = hot.p99_ms / base2.p99_ms
        yield [
            "redirect hot, 2 workers: p99 <= 2x baseline p99",
            f"{p99:.2f}x",
            _met(p99 <= 2.0),
        ]
        yield [
            "redirect hot, 2 workers: zero errors",
            str(hot.errors),
            _met(hot.errors == 0),
        ]
    tally = results.tallies.get("redirect hot 2w")
    if tally:
        yield [
            "redirect hot, 2 workers: every click accounted for",
            f"{tally.counted:,} counted, {tally.answered:,} answered",
            _met(tally.exact),
        ]
    yield from _ratio_target(results, "redirect embedded", 1, 0.5)
    flood = next((r for r in results.rows if r.benchmark == "redirect 404 flood"), None)
    if flood:
        yield from _ratio_target(results, flood.benchmark, flood.workers, 0.7)
    reads = results.store_reads.get(flood.benchmark if flood else "")
    if reads:
        yield [
            "redirect 404 flood: no database query after the first miss per code",
            f"{reads.after_first_miss:,} after first miss ({reads.reads:,} reads, "
            f"{reads.codes:,} codes)",
            _met(reads.after_first_miss == 0),
        ]
    for p in results.pipeline:
        yield [
            f"pipeline {p.sink}, consumers {_consumers(p)}: >= 50,000 "
            "events/s per consumer",
            f"{p.per_consumer:,.0f}",
            _met(p.per_consumer >= 50_000),
        ]
    create = results.find("create link", 1)
    if create:
        yield [
            "create on Postgres: >= 2,000 links/s",
            f"{create.rps:,.0f}",
            _met(create.rps >= 2000),
        ]


def _ratio_target(
    results: Results, benchmark: str, workers: int, floor: float
) -> Iterator[list[str]]:
    row = results.find(benchmark, workers)
    base = row.paired if row else None
    if row and base:
        ratio = row.rps / base.rps
        yield [
            f"{benchmark}, {workers} worker(s): >= {floor}x baseline req/s",
            f"{ratio:.2f}x",
            _met(ratio >= floor),
        ]
