"""Profile one granian worker under load with py-spy and rank what costs most.

``python -m bench.profile hot|embedded|notfound|create|baseline [--seconds 20]``
starts BoltLink on the production profile (``embedded``: the embedded
profile) with one worker (and the bare
Starlette baseline beside it), puts wrk's load on one of them and samples
its worker with ``py-spy record --gil`` (``pip install py-spy``). It prints
the GIL time per request, its split by component of the request path, the
functions with the most samples, and leaves the raw collapsed stacks in
``bench/results/`` for a flame graph.

``python -m bench.profile aggregate|ingest`` samples one consumer of that
role instead, draining a pre-filled stream as the pipeline benchmark does.
"""

from __future__ import annotations

import argparse
import collections
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.measure import Plan
from bench.pipeline import profile_sink
from bench.redirects import boltlink_server
from bench.seed import create_links, new_codes
from bench.servers import Served
from bench.wrk import WrkResult, run_wrk

__all__ = ["main", "rank"]

RESULTS = Path(__file__).resolve().parent / "results"
# Frames every sample of a granian worker starts with: the CLI that started
# the server and granian's worker spawning.
_STARTUP = (
    "<module> (",
    "main (boltlink/cli.py",
    "serve (boltlink/cli.py",
    "serve_forever (",
    "_run_granian (",
    "_run_with_consumers (",
    "_fail_cleanly",
)
_STARTUP_FILES = ("click/", "multiprocessing/", "granian/server/")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['name']} ({path})"


# What a sample is spent on. BoltLink's own layers are looked for first, the
# innermost one winning (a Redis call made by the resolver is the resolver's);
# library frames only name samples that no BoltLink layer holds.
_OWNERS = (
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("PostgresStore", "link store queries (psycopg)"),
    ("ClickRecorder", "click stream write (recorder, redis-py)"),
    ("encode_clicks", "click stream write (recorder, redis-py)"),
    ("LinkResolver", "link lookup and cache fill (resolver, redis-py)"),
    ("Target.", "link lookup and cache fill (resolver, redis-py)"),
    ("_click_of", "click capture (headers, Click)"),
    ("Click.", "click capture (headers, Click)"),
    ("authorize (boltlink", "api key check"),
    ("linkinput", "request body parsing (api)"),
    ("render_link", "response body (api)"),
)
_LIBRARIES = (
    ("psycopg", "link store queries (psycopg)"),
    ("redis/", "redis-py, other"),
    ("_send (starlette/middleware/errors", "response send (into granian)"),
    ("sender (starlette/_exception_handler", "response send (into granian)"),
    ("starlette/responses", "response object (starlette)"),
    ("redirect (boltlink", "redirect view itself"),
    ("Request.", "request object (starlette)"),
    ("starlette/", "routing and middleware (starlette)"),
    ("granian/", "granian glue (Python)"),
    ("asyncio/", "asyncio (Python)"),
)


def _component(frames: list[str]) -> str:
    for rules in (_OWNERS, _LIBRARIES):
        for frame in reversed(frames):
            for marker, component in rules:
                if marker in frame:
                    return component
    return "other Python"


def components(collapsed: str) -> list[tuple[str, float]]:
    """Return the share of GIL-held samples per part of the redirect path."""
    shares: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = _app_frames(stack)
        name = _component(frames) if frames else "event loop and granian (native)"
        shares[name] += int(count)
    total = sum(shares.values()) or 1
    return [(name, 100 * hits / total) for name, hits in shares.most_common()]


def _app_frames(stack: str) -> list[str]:
    frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
    return [
        f
        for f in frames
        if not f.startswith(_STARTUP) and not any(d in f for d in _STARTUP_FILES)
    ]


def rank(collapsed: str, top: int = 25) -> str:
    """Return tables of the costliest functions in py-spy's raw output.

    Frames of the worker's start-up (the CLI, granian's process spawning)
    sit under every sample and are left out; samples with no Python frame
    are native code holding the GIL (granian's Rust side, C extensions).
    """
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = native = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = _app_frames(stack)
        if not frames:
            native += int(count)
            continue
        for name in set(frames):
            inclusive[name] += int(count)
        own[frames[-1]] += int(count)
    lines = [
        f"{total} samples with the GIL held; {100 * native / max(total, 1):.1f}% "
        "in the event loop or granian's native code (no app frame)",
        "\nby component:",
    ]
    lines += [f"{share:6.1f}%  {name}" for name, share in components(collapsed)]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"\n{title}:")
        for name, hits in counter.most_common(top):
            lines.append(f"{100 * hits / total:6.1f}%  {name}")
    return "\n".join(lines)


_RATE = 250


def main(argv: list[str] | None = None) -> int:
    """Profile one scenario and print the ranking."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument(
        "scenario",
        choices=[
            "hot",
            "embedded",
            "notfound",
            "create",
            "baseline",
            "aggregate",
            "ingest",
        ],
    )
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="aggregate, ingest: sample every busy thread, not the GIL holder",
    )
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found: pip install py-spy")

    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / f"profile-{args.scenario}-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    if args.scenario in ("aggregate", "ingest"):
        rate = profile_sink(
            args.scenario, args.seconds, output, gil_only=not args.all_threads
        )
        print(f"{args.scenario}: {rate:,.0f} events/s under py-spy, one consumer")
        print(rank(output.read_text()))
        print(f"\nraw stacks: {output}", file=sys.stderr)
        return 0
    production = args.scenario != "embedded"
    with boltlink_server("profile", 1, production=production) as server:
        codes = new_codes(Plan().hot_links, "h")
        create_links(server.served.url, server.key, codes)
        path = server.codes_file(codes, "hot")
        unknown = server.codes_file(new_codes(Plan().flood_codes, "nf"), "flood")
        target = server.baseline if args.scenario == "baseline" else server.served
        assert target is not None
        script, env = {
            "hot": ("cycle.lua", {"BENCH_CODES": str(path)}),
            "embedded": ("cycle.lua", {"BENCH_CODES": str(path)}),
            "baseline": ("cycle.lua", {"BENCH_CODES": str(path)}),
            "notfound": ("notfound.lua", {"BENCH_CODES": str(unknown)}),
            "create": (
                "create.lua",
                {"BENCH_KEY": server.key, "BENCH_NONCE": secrets.token_hex(3)},
            ),
        }[args.scenario]
        rps = _record(target, script, env, args.seconds, output)
    collapsed = output.read_text()
    samples = sum(int(line.rpartition(" ")[2]) for line in collapsed.splitlines())
    busy_us = samples / _RATE * 1e6 / (rps * args.seconds)
    print(
        f"{args.scenario}: {rps:,.0f} req/s under py-spy, {busy_us:.0f} µs of GIL "
        "per request"
    )
    print(rank(collapsed))
    print(f"\nraw stacks: {output}", file=sys.stderr)
    return 0


def _record(
    target: Served, script: str, env: dict[str, str], seconds: int, output: Path
) -> float:
    # Load starts first and outlasts the recording, which sees only load.
    result: list[WrkResult] = []
    load = threading.Thread(
        target=lambda: result.append(
            run_wrk(target.url, script, seconds=seconds + 4, env=env)
        )
    )
    load.start()
    time.sleep(2)
    [pid] = target.worker_pids()
    subprocess.run(
        [
            "py-spy",
            "record",
            f"--pid={pid}",
            f"--duration={seconds}",
            f"--rate={_RATE}",
            "--gil",
            "--format=raw",
            f"--output={output}",
            "--nonblocking",
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    load.join()
    return result[0].rps


if __name__ == "__main__":
    sys.exit(main())
