"""Serve and measure the baselines with the same workers, loop and load.

The bare Starlette baseline also runs beside every redirect benchmark, its
runs made in turn with BoltLink's (see ``bench.measure.measure``); the rows
here measure the raw ASGI ceiling on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from bench.measure import Plan, Row, measure
from bench.results import BASELINE_RAW, BASELINE_STARLETTE, Results
from bench.sandbox import Sandbox
from bench.seed import new_codes
from bench.servers import Served, free_port, granian_command, serve

__all__ = ["baseline_server", "run_baselines"]

_TARGETS = {
    BASELINE_STARLETTE: "bench.baseline_app:starlette_app",
    BASELINE_RAW: "bench.baseline_app:raw_app",
}


@contextlib.contextmanager
def baseline_server(
    box: Sandbox, workers: int, name: str = BASELINE_STARLETTE
) -> Iterator[Served]:
    """Serve the baseline ``name`` with ``workers`` until the block ends."""
    port = free_port()
    command = granian_command(_TARGETS[name], port=port, workers=workers)
    log = box.log(f"{name.replace(' ', '-')}-{workers}")
    with serve(command, box.embedded_env(), port=port, log=log, workers=workers) as s:
        yield s


def run_baselines(plan: Plan, workers: Iterable[int], results: Results) -> None:
    """Add a row of the raw ASGI ceiling per worker count to ``results``.

    The Starlette baseline is measured beside each benchmark instead.
    """
    with Sandbox("baseline") as box:
        # The same request shape as the hot benchmark: codes of the same
        # length, cycled over by the same script.
        codes = box.folder / "codes.txt"
        codes.write_text("\n".join(new_codes(plan.hot_links, "h")) + "\n")
        for count in sorted(set(workers)):
            with baseline_server(box, count, BASELINE_RAW) as served:
                [measured] = measure(
                    [served],
                    "cycle.lua",
                    plan,
                    env=lambda _: {"BENCH_CODES": str(codes)},
                )
            results.rows.append(Row(BASELINE_RAW, count, measured.runs))
