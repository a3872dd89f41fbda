"""Open the link store named by a database URL, and migrate its schema.

``sqlite:///abs/path.sqlite3`` selects the SQLite backend, ``postgresql://``
(or ``postgres://``) the Postgres one; aiosqlite loads only for SQLite.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from boltlink.errors import ConfigError
from boltlink.store.base import ClickBatchEntry, LinkStore

# NOTE: imported here, before ``def migrate`` below, because importing the
# submodule later would rebind ``boltlink.store.migrate`` to the module.
from boltlink.store.migrate import migrate_postgres, migrate_sqlite

__all__ = ["ClickBatchEntry", "LinkStore", "create_store", "migrate"]


def create_store(dsn: str, *, schema: str = "public", pool_size: int = 10) -> LinkStore:
    """Build the store for ``dsn``, not yet open; call ``open`` before use."""
    kind, target = _parse_dsn(dsn)
    if kind == "sqlite":
        from boltlink.store.sqlite import SqliteStore

        return SqliteStore(target, pool_size=pool_size)

    from boltlink.store.postgres import PostgresStore

    return PostgresStore(target, schema=schema, pool_size=pool_size)


def migrate(dsn: str, *, schema: str = "public") -> list[str]:
    """Apply pending migrations to the database of ``dsn``; return their ids."""
    kind, target = _parse_dsn(dsn)
    if kind == "sqlite":
        return migrate_sqlite(target)
    return migrate_postgres(target, schema)


def _parse_dsn(dsn: str) -> tuple[str, str]:
    """Return the backend of ``dsn`` and what it connects to.

    The error names only the scheme, since a Postgres URL may hold a password.
    """
    scheme = urlsplit(dsn).scheme
    if scheme in ("postgresql", "postgres"):
        return "postgres", dsn
    if scheme != "sqlite":
        raise ConfigError(f"unsupported database url scheme {scheme!r}")

    if not dsn.startswith("sqlite:///"):
        raise ConfigError(f"sqlite url {dsn!r} must name an absolute path")
    # Both sqlite:///abs/path and SQLAlchemy's sqlite:////abs/path name /abs/path.
    return "sqlite", "/" + unquote(dsn.removeprefix("sqlite://")).lstrip("/")
