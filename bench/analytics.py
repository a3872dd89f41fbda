"""Benchmark the analytics queries and the export over synthetic events in chDB.

``python -m bench.analytics [--quick]`` (or ``python -m bench.run --only
analytics``). For each data set size (1 and 10 million events; 100,000 and 1
million with ``--quick``) a child process fills a fresh chDB folder inside
ClickHouse (``INSERT ... SELECT ... FROM numbers(N)``, the materialized views
filling the rollups as in production). Then every operation runs in a fresh
child process of its own, once to warm up and ``repeats`` times measured, so
its peak resident memory (``ru_maxrss``) is its own and can be compared
across sizes: a query that aggregates in ClickHouse keeps the same peak
whatever the number of events.

The events: 30 days (January 2025), 1,000 links of which link 1 gets one
event in ten, 20 countries, 6 user agents of which one is Googlebot (one
event in six is a bot), 10 referrer hosts, about N/3 visitors.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["analytics_bench", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 31, tzinfo=UTC)
LINKS = 1000
HOT_LINK = 1
TARGET_SECONDS = 1.0

# One row per user agent: agent, browser, version, os, os version, device,
# bot, bot kind, bot name. Index 5 is the bot.
_AGENTS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/143.0.0.0", "Chrome",
     "143", "Windows", "10", "desktop", 0, "", ""),
    ("Mozilla/5.0 (Macintosh) Version/26.0 Safari/605.1.15", "Safari", "26",
     "Mac OS X", "10", "desktop", 0, "", ""),
    ("Mozilla/5.0 (iPhone) Version/26.0 Mobile Safari/604.1", "Mobile Safari",
     "26", "iOS", "18", "mobile", 0, "", ""),
    ("Mozilla/5.0 (Linux; Android 10; K) Chrome/143.0.0.0 Mobile", "Chrome Mobile",
     "143", "Android", "10", "mobile", 0, "", ""),
    ("Mozilla/5.0 (Windows NT 10.0; rv:146.0) Firefox/146.0", "Firefox", "146",
     "Windows", "10", "desktop", 0, "", ""),
    ("Mozilla/5.0 (compatible; Googlebot/2.1)", "Googlebot", "2", "", "", "bot",
     1, "crawler", "Googlebot"),
]  # fmt: skip
_COUNTRIES = [
    "US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "ES", "IT",
    "NL", "SE", "PL", "AU", "MX", "KR", "TR", "CH", "BE", "AT",
]  # fmt: skip
_REFERRERS = [
    "", "news.ycombinator.com", "t.co", "www.google.com", "www.reddit.com",
    "l.facebook.com", "www.linkedin.com", "duckduckgo.com", "github.com",
    "mail.google.com",
]  # fmt: skip


# -- building a data set (child process) -----------------------------------------


def _pick(values: list[Any], salt: int, index: int | None = None) -> str:
    array = "[" + ", ".join(_sql_literal(v) for v in values) + "]"
    if index is not None:
        return f"{array}[1 + ({index})]"
    return f"{array}[1 + cityHash64(number, {salt}) % {len(values)}]"


def _sql_literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def fill_sql(events: int) -> str:
    """Return the INSERT ... SELECT that writes ``events`` synthetic clicks."""
    agent = "cityHash64(number, 3) % 6"
    columns = [list(column) for column in zip(*_AGENTS, strict=True)]
    span_ms = int((END - START).total_seconds() * 1000)
    start_ms = int(START.timestamp() * 1000)
    link = f"if(number % 10 = 0, {HOT_LINK}, 2 + cityHash64(number, 1) % {LINKS - 1})"
    select = {
        "event_id": "toString(number)",
        "link_id": link,
        "code": f"concat('l', toString({link}))",
        "ts": f"fromUnixTimestamp64Milli(toInt64({start_ms} + "
        f"cityHash64(number, 2) % {span_ms}), 'UTC')",
        "ip": "IPv4NumToString(toUInt32(bitAnd(cityHash64(number, 4), 4294967040)))",
        "user_agent": _pick(columns[0], 0, agent),
        "referrer": "''",
        "accept_language": "'en-US,en;q=0.9'",
        "country": _pick(_COUNTRIES, 5),
        "city": "''",
        "referrer_host": _pick(_REFERRERS, 6),
        "browser": _pick(columns[1], 0, agent),
        "browser_version": _pick(columns[2], 0, agent),
        "os": _pick(columns[3], 0, agent),
        "os_version": _pick(columns[4], 0, agent),
        "device": _pick(columns[5], 0, agent),
        "language": "'en'",
        "bot": f"toUInt8({_pick(columns[6], 0, agent)})",
        "bot_kind": _pick(columns[7], 0, agent),
        "bot_name": _pick(columns[8], 0, agent),
        "visitor": f"cityHash64(number % {max(1, events // 3)})",
    }
    names = ", ".join(select)
    values = ", ".join(f"{expr} AS {name}" for name, expr in select.items())
    return (
        f"INSERT INTO clicks ({names}) SELECT {values} FROM numbers({events}) "
        "SETTINGS insert_deduplicate = 0"
    )


def _open(folder: Path) -> Any:
    import clickhouse_connect

    from boltlink.analytics import AnalyticsStore

    store = AnalyticsStore(clickhouse_connect.get_client(dsn=f"chdb://{folder}"))
    store.migrate()
    return store


def build(folder: Path, events: int) -> dict[str, Any]:
    """Fill ``folder`` with ``events`` synthetic clicks; return counts."""
    store = _open(folder)
    started = time.perf_counter()
    store._client.command(fill_sql(events))
    seconds = time.perf_counter() - started
    settle(store)
    rows = {
        table: int(store._client.command(f"SELECT count() FROM {table}"))
        for table in _TABLES
    }
    store.close()
    return {"events": events, "seconds": round(seconds, 1), "rows": rows}


def settle(store: Any) -> None:
    """Merge every table's parts, as background merges do at rest.

    Measured right after the fill, each query would race the background
    merges of the fresh parts for the same cores.
    """
    for table in _TABLES:
        store._client.command(f"OPTIMIZE TABLE {table} FINAL")


_TABLES = ("clicks", "clicks_hourly", "clicks_daily", "clicks_dims_hourly")


# -- measuring one operation (child process) -------------------------------------


def _operations(
    store: Any, export_events: int
) -> dict[str, Callable[[], Awaitable[Any]]]:
    from boltlink.analytics.export import export_sql, parquet_chunks, raw_chunks
    from boltlink.analytics.grouped import GroupQuery, grouped_counts
    from boltlink.analytics.overview import overview
    from boltlink.analytics.queries import StatsQuery, link_stats
    from boltlink.analytics.scope import Scope

    everything = Scope(START, END)
    scoped = Scope(START, END, link_ids=tuple(range(1, 101)))

    async def export(fmt: str) -> int:
        # About ``export_events`` events: timestamps are uniform over the
        # month, so the range is cut at that share of it.
        total = (await store.query("SELECT count() FROM clicks"))[0][0]
        cut = START + (END - START) * min(1.0, export_events / total)
        scope = Scope(START, cut, bots="include")
        sql, params = export_sql(scope), scope.params()
        if fmt == "Parquet":
            stream = store.stream(lambda c: parquet_chunks(c, sql, params))
        else:
            stream = store.stream(lambda c: raw_chunks(c, sql, params, fmt))
        await stream.start()
        return sum([len(chunk) async for chunk in stream.chunks()])

    def day(tz: str, interval: str = "day") -> StatsQuery:
        return StatsQuery(START, END, interval, tz)

    return {
        "overview, all links": lambda: overview(store, everything, limit=10),
        "overview, 100-link key": lambda: overview(store, scoped, limit=10),
        "global by country": lambda: grouped_counts(
            store, GroupQuery(everything, "country", 50)
        ),
        "global by day": lambda: grouped_counts(
            store, GroupQuery(everything, "day", 50)
        ),
        "global by browser, country=US (raw)": lambda: grouped_counts(
            store, GroupQuery(everything, "browser", 50, {"country": ("US",)})
        ),
        "link stats, day, UTC": lambda: link_stats(store, HOT_LINK, day("UTC")),
        "link stats, hour, New York": lambda: link_stats(
            store, HOT_LINK, day("America/New_York", "hour")
        ),
        "link stats, day, Kolkata (raw)": lambda: link_stats(
            store, HOT_LINK, day("Asia/Kolkata")
        ),
        "export jsonl": lambda: export("JSONEachRow"),
        "export csv": lambda: export("CSV"),
        "export parquet": lambda: export("Parquet"),
    }


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    folder: Path, name: str, repeats: int, export_events: int
) -> dict[str, Any]:
    """Run one operation once to warm up, then ``repeats`` times; time each."""
    store = _open(folder)
    opened_mib = _peak_mib()
    operation = _operations(store, export_events)[name]

    async def run() -> list[float]:
        await operation()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            await operation()
            seconds.append(time.perf_counter() - started)
        return seconds

    seconds = asyncio.run(run())
    store.close()
    return {"seconds": seconds, "opened_mib": opened_mib, "peak_mib": _peak_mib()}


# -- the driver ------------------------------------------------------------------


def _child(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.analytics", *args]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_all(
    sizes: list[int], repeats: int, export_events: int, data: Path | None
) -> dict[str, Any]:
    """Build each data set (or reuse it from ``data``) and measure on it."""
    report: dict[str, Any] = {"repeats": repeats, "sets": []}
    for events in sizes:
        keep = data is not None
        folder = (
            data / f"events-{events}"
            if data is not None
            else Path(tempfile.mkdtemp(prefix="bench-analytics-"))
        )
        try:
            built = _built(folder, events)
            figures = {}
            for name in _operations(None, export_events):
                _say(f"{events:,} events: {name}")
                figures[name] = _child(
                    "measure", str(folder), name, str(repeats), str(export_events)
                )
            report["sets"].append({**built, "operations": figures})
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
    report["export_events"] = export_events
    return report


def _built(folder: Path, events: int) -> dict[str, Any]:
    marker = folder / "bench-build.json"
    if marker.exists():
        _say(f"reusing {events:,} events in {folder}")
        built: dict[str, Any] = json.loads(marker.read_text())
        return built
    _say(f"filling {events:,} events")
    built = _child("build", str(folder), str(events))
    marker.write_text(json.dumps(built))
    return built


def render(report: dict[str, Any]) -> str:
    """Return the Markdown table: latency median and peak memory per size."""
    sets = report["sets"]
    head = ["operation"]
    for s in sets:
        head += [f"{s['events']:,}: median s", f"{s['events']:,}: peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in sets[0]["operations"]:
        cells = [name]
        for s in sets:
            figure = s["operations"][name]
            cells += [
                f"{statistics.median(figure['seconds']):.3f}",
                f"{figure['peak_mib']:.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    opened = ", ".join(f"{s['events']:,}: {_opened_mib(s):.0f} MiB" for s in sets)
    filled = ", ".join(
        f"{s['events']:,} in {s['seconds']} s (rows: {s['rows']})" for s in sets
    )
    return (
        "\n".join(
            [
                f"Analytics bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, chDB; "
                f"median of {report['repeats']} runs after one warm-up; each operation "
                "in its own process. Exports write the first "
                f"{report['export_events']:,} events.",
                "",
                *lines,
                "",
                f"Peak memory after opening chDB, before any operation: {opened}.",
                f"Filled: {filled}.",
            ]
        )
        + "\n"
    )


def _opened_mib(figures: dict[str, Any]) -> float:
    return min(f["opened_mib"] for f in figures["operations"].values())


def _say(message: str) -> None:
    print(
        f"[analytics {time.strftime('%H:%M:%S')}] {message}",
        file=sys.stderr,
        flush=True,
    )


def analytics_bench(plan: Any, results: Any) -> None:
    """Run as ``bench.run --only analytics``: quick plans use smaller sets."""
    quick = plan.repeats < 3
    main(["--quick"] if quick else [])


def main(argv: list[str] | None = None) -> int:
    """Build the data sets, measure, print and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.analytics")
    parser.add_argument("--quick", action="store_true", help="100k and 1M events")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--data", type=Path, help="keep the data sets in this folder and reuse them"
    )
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.args and args.args[0] == "settle":
        store = _open(Path(args.args[1]))
        settle(store)
        store.close()
        return 0
    if args.args and args.args[0] == "build":
        print(json.dumps(build(Path(args.args[1]), int(args.args[2]))))
        return 0
    if args.args and args.args[0] == "measure":
        folder, name, repeats, export = args.args[1:5]
        print(json.dumps(measure(Path(folder), name, int(repeats), int(export))))
        return 0

    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    export_events = min(sizes[0], 1_000_000)
    report = run_all(sizes, max(3, args.repeats), export_events, args.data)
    table = render(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    (RESULTS / f"analytics-{stamp}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "analytics-latest.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
