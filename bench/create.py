"""Benchmark ``POST /api/v1/links`` on Postgres, one worker."""

from __future__ import annotations

import secrets

from bench.measure import Plan, Row, measure
from bench.results import Results
from bench.sandbox import Sandbox
from bench.seed import create_key
from bench.servers import boltlink_command, free_port, serve

__all__ = ["create_links_bench"]


def create_links_bench(plan: Plan, results: Results) -> None:
    """Create links with unique custom codes as fast as the API allows."""
    port = free_port()
    with Sandbox("create") as box:
        env = box.production_env(BOLTLINK_PORT=str(port), BOLTLINK_WORKERS="1")
        box.migrate(env)
        key = create_key(env)
        nonce = secrets.token_hex(3)
        log = box.log("serve")
        with serve(boltlink_command("serve"), env, port=port, log=log) as served:
            # Each run gets its own code prefix: a code used twice is a 409.
            [measured] = measure(
                [served],
                "create.lua",
                plan,
                env=lambda n: {"BENCH_KEY": key, "BENCH_NONCE": f"n{nonce}r{n}t"},
            )
        results.rows.append(Row("create link", 1, measured.runs))
