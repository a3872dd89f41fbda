"""Apply the SQL migrations of either backend, one process at a time."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg

from boltlink.errors import BackendUnavailable
from boltlink.store.postgres import describe_dsn, validate_schema

__all__ = ["migrate_postgres", "migrate_sqlite"]

logger = logging.getLogger("boltlink.db")

_SOURCES = {
    "sqlite": "package:boltlink:migrations/sqlite",
    "postgres": "package:boltlink:migrations/postgres",
}


def migrate_sqlite(path: str) -> list[str]:
    """Bring the SQLite file at ``path`` up to date; return the ids applied."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(f"{path}.migrate.lock"):
        _enable_wal(path)
        # yoyo hands the path to sqlite as a file: URI, which sqlite decodes.
        applied = _apply(f"sqlite:///{quote(path)}", _SOURCES["sqlite"])
    logger.info("migrated sqlite path=%s applied=%s", path, applied)
    return applied


def migrate_postgres(dsn: str, schema: str = "public") -> list[str]:
    """Bring ``schema`` of the Postgres database up to date; return the ids."""
    validate_schema(schema)
    with _advisory_lock(dsn, schema) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        applied = _apply(_yoyo_url(dsn, schema), _SOURCES["postgres"])
    logger.info(
        "migrated postgres database=%s schema=%s applied=%s",
        describe_dsn(dsn),
        schema,
        applied,
    )
    return applied


def _apply(url: str, source: str) -> list[str]:
    """Apply the migrations of ``source`` not yet applied at ``url``."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    try:
        migrations = read_migrations(source)
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        backend.connection.close()


@contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the duration of the block."""
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _enable_wal(path: str) -> None:
    """Switch the file to write-ahead logging; the mode persists in the file."""
    conn = sqlite3.connect(path, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


@contextmanager
def _advisory_lock(dsn: str, schema: str) -> Iterator[psycopg.Connection]:
    """Hold a session advisory lock keyed on ``schema`` on its own connection.

    yoyo's own lock table lives inside the schema, which may not exist yet;
    the advisory lock also covers creating it.
    """
    key = _lock_key(schema)
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        # libpq adds a hint on a second line; keep the error to one line.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"postgres {describe_dsn(dsn)!r} unavailable: {reason}"
        raise BackendUnavailable(message) from exc

    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _lock_key(schema: str) -> int:
    """Derive a signed 64-bit advisory lock key from the schema name."""
    digest = hashlib.sha256(f"boltlink.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _yoyo_url(dsn: str, schema: str) -> str:
    """Turn a libpq URL into yoyo's psycopg 3 URL that targets ``schema``."""
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("schema", schema)]
    return urlunsplit(
        parts._replace(scheme="postgresql+psycopg", query=urlencode(query))
    )
