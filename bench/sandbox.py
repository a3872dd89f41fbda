"""Give each benchmark its own Postgres schema, Redis prefix and folder.

Nothing a benchmark writes outlives it: the schema is dropped, the keys
under its prefix are deleted by ``SCAN`` (never ``FLUSHDB``: the server is
shared) and the folder removed, even when the benchmark fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psycopg
import redis

from bench.servers import boltlink_command

__all__ = ["DATABASE_URL", "REDIS_URL", "Sandbox"]

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _clean_environ() -> dict[str, str]:
    # The caller's own BOLTLINK_* settings must not leak into a benchmark.
    return {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}


@dataclass
class Sandbox:
    """The private data of one benchmark, removed on exit."""

    name: str
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"boltlink-bench-{self.name}-"))

    @property
    def schema(self) -> str:
        """Return the Postgres schema, ``bench_<random>``."""
        return f"bench_{self.token}"

    @property
    def prefix(self) -> str:
        """Return the Redis key prefix, ``bench<random>:``."""
        return f"bench{self.token}:"

    def production_env(self, **extra: str) -> dict[str, str]:
        """Return the environment of a production-profile BoltLink process."""
        return self.embedded_env(
            BOLTLINK_DATABASE_URL=DATABASE_URL,
            BOLTLINK_DATABASE_SCHEMA=self.schema,
            BOLTLINK_REDIS_URL=REDIS_URL,
            BOLTLINK_REDIS_PREFIX=self.prefix,
            BOLTLINK_CLICKHOUSE_URL=f"chdb://{self.folder / 'chdb'}",
            # The consumers run as their own processes, as in production.
            BOLTLINK_INPROCESS_WORKERS="false",
            **extra,
        )

    def embedded_env(self, **extra: str) -> dict[str, str]:
        """Return the environment of an embedded-profile BoltLink process."""
        return {
            **_clean_environ(),
            "BOLTLINK_DATA_DIR": str(self.folder / "data"),
            "BOLTLINK_HOST": "127.0.0.1",
            # Granian's access log is off: the baselines write none either.
            "BOLTLINK_ACCESS_LOG": "false",
            "BOLTLINK_LOG_LEVEL": "WARNING",
            **extra,
        }

    def migrate(self, env: dict[str, str]) -> None:
        """Run ``boltlink migrate`` with ``env``; raise if it fails."""
        done = subprocess.run(
            boltlink_command("migrate"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"boltlink migrate failed: {done.stderr.strip()}")

    def insert_links(self, codes: list[str]) -> None:
        """Insert a link per code straight into the schema, in no cache at all.

        Each points at ``https://example.com/landing/<code>``, as the links
        that ``bench.seed.create_links`` makes through the API.
        """
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{self.schema}".links (code, url)'
                " SELECT c, 'https://example.com/landing/' || c"
                " FROM unnest(%s::text[]) AS c",
                (codes,),
            )

    def code_lookups(self) -> int:
        """Return how often Postgres has read this schema's links by code.

        Index scans of the ``(domain, code)`` key plus sequential scans of
        ``links``, from Postgres's own statistics: the other readers of the
        table (the aggregate's updates by id) use the primary key.
        """
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(i.idx_scan, 0) + coalesce(t.seq_scan, 0)"
                " FROM pg_stat_user_tables AS t JOIN pg_stat_user_indexes AS i"
                " ON i.relid = t.relid AND i.indexrelname = 'links_domain_code_key'"
                " WHERE t.schemaname = %s AND t.relname = 'links'",
                (self.schema,),
            ).fetchone()
        return int(row[0]) if row else 0

    def log(self, name: str) -> Path:
        """Return the path of a log file in the sandbox."""
        return self.folder / "logs" / f"{name}.log"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Drop the schema, delete the prefixed keys and remove the folder."""
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        delete_keys(self.prefix)
        shutil.rmtree(self.folder, ignore_errors=True)


def delete_keys(prefix: str, pattern: str = "*") -> int:
    """Delete the keys under ``prefix`` matching ``pattern``; return how many."""
    client = redis.Redis.from_url(REDIS_URL)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}{pattern}", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted
