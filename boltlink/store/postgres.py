"""Store links, API keys and click counters in PostgreSQL through a pool.

Every table name is qualified with the schema instead of relying on
``search_path``, and server-side prepared statements are off, so the store
also works behind PgBouncer in transaction mode.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from boltlink.errors import (
    BackendUnavailable,
    CodeTaken,
    ConfigError,
    LinkGone,
    LinkNotFound,
)
from boltlink.models import ApiKey, Link, NewLink
from boltlink.store.base import UPDATABLE_FIELDS, ClickBatchEntry

__all__ = ["PostgresStore", "describe_dsn", "validate_schema"]

logger = logging.getLogger("boltlink.db")

_Connection = psycopg.AsyncConnection[TupleRow]

# Lower case only: yoyo sets search_path to the bare name, which Postgres
# folds to lower case, while the store quotes it.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_KEY_COLUMNS = "id, name, prefix, scopes, created_at, revoked_at, last_used_at"


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case identifier, else raise."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(f"schema {schema!r} is not a lower-case sql identifier")
    return schema


def describe_dsn(dsn: str) -> str:
    """Name the server and database of ``dsn`` without its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<malformed dsn>"
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname', '')}"


class PostgresStore:
    """Keep links in PostgreSQL; the ``LinkStore`` of multi-node deployments."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        pool_size: int = 10,
        timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._where = describe_dsn(dsn)
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._tables = _Tables(validate_schema(schema))

    async def open(self) -> None:
        """Open the pool and wait until it holds a first connection."""
        # One direct attempt first: an unreachable server fails at once with
        # its own reason, instead of after the pool's logged retries.
        try:
            probe = await psycopg.AsyncConnection.connect(
                self._dsn, connect_timeout=max(1, round(self._timeout))
            )
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc
        await probe.close()

        pool = AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "prepare_threshold": None},
            timeout=self._timeout,
            name="boltlink",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except psycopg.OperationalError as exc:
            await pool.close()
            raise self._unavailable(exc) from exc

        self._pool = pool
        logger.info("postgres pool open database=%s", self._where)

    async def close(self) -> None:
        """Close the pool and every connection in it."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def pool_stats(self) -> dict[str, int]:
        """Return the pool's gauges and its counters since the last call."""
        return self._pool.pop_stats() if self._pool is not None else {}

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise ``BackendUnavailable`` on failure."""
        async with self._connection() as conn:
            await conn.execute("SELECT 1")

    # -- links ------------------------------------------------------------------

    async def create_link(self, new: NewLink) -> Link:
        """Insert a link and its tags; raise ``CodeTaken`` if the code exists."""
        [link] = await self.create_links([new])
        if link is None:
            raise CodeTaken(f"code {new.code!r} already taken", field="code")
        return link

    async def create_links(self, news: Sequence[NewLink]) -> list[Link | None]:
        """Insert links and their tags; None for each whose code is taken."""
        _check_distinct(news)
        if not news:
            return []
        # One statement, so one round trip and one commit for the batch, and
        # all of it or nothing. A code taken, even by a concurrent insert,
        # inserts and returns nothing. Rows go in sorted by code: two batches
        # that share codes wait on each other in one order, never deadlock.
        ordered = sorted(news, key=lambda new: (new.domain, new.code))
        # One JSON document, not an array per column: orjson writes it in C
        # where psycopg would dump every element of ten arrays.
        rows = [_new_row(new, position) for position, new in enumerate(ordered)]
        batch = orjson.dumps(rows).decode()
        async with self._connection() as conn:
            cursor = await conn.execute(self._tables.insert_links, (batch,))
            inserted = await cursor.fetchall()
        created = {(row[12], row[1]): _link(row) for row in inserted}
        return [created.get((new.domain, new.code)) for new in news]

    async def get_link(self, code: str, domain: str = "") -> Link | None:
        """Return the link with exactly this code, deleted ones included."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"{self._tables.select_link} WHERE l.domain = %s AND l.code = %s",
                (domain, code),
            )
            row = await cursor.fetchone()
        return None if row is None else _link(row)

    async def list_links(
        self, *, limit: int, before_id: int | None = None, tag: str | None = None
    ) -> list[Link]:
        """Return live links newest first, ids below ``before_id``, by tag."""
        t = self._tables
        query = (
            f"{t.select_link} WHERE l.deleted_at IS NULL"
            " AND (%(before)s::bigint IS NULL OR l.id < %(before)s)"
            " AND (%(tag)s::text IS NULL OR EXISTS (SELECT 1 FROM"
            f" {t.link_tags} AS f WHERE f.link_id = l.id AND f.tag = %(tag)s))"
            " ORDER BY l.id DESC LIMIT %(limit)s"
        )
        params = {"before": before_id, "tag": tag, "limit": limit}
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
        return [_link(row) for row in rows]

    async def update_link(
        self, code: str, changes: Mapping[str, Any], domain: str = ""
    ) -> Link:
        """Apply ``changes`` to a live link; ``tags`` replaces the whole set."""
        columns = _column_changes(changes)
        assignments = "".join(f", {name} = %s" for name in columns)
        async with self._transaction() as conn:
            link_id = await self._lock_live_link(conn, code, domain)
            await conn.execute(
                f"UPDATE {self._tables.links} SET updated_at = now(){assignments}"
                " WHERE id = %s",
                (*columns.values(), link_id),
            )

            if "tags" in changes:
                await conn.execute(
                    f"DELETE FROM {self._tables.link_tags} WHERE link_id = %s",
                    (link_id,),
                )
                await self._insert_tags(conn, link_id, changes["tags"])
            return await self._fetch_link(conn, link_id)

    async def delete_link(self, code: str, domain: str = "") -> Link:
        """Mark a live link deleted and return its tombstone."""
        async with self._transaction() as conn:
            link_id = await self._lock_live_link(conn, code, domain)
            await conn.execute(
                f"UPDATE {self._tables.links} SET deleted_at = now() WHERE id = %s",
                (link_id,),
            )
            return await self._fetch_link(conn, link_id)

    async def _lock_live_link(self, conn: _Connection, code: str, domain: str) -> int:
        """Lock the link row for this transaction; raise if missing or deleted."""
        cursor = await conn.execute(
            f"SELECT id, deleted_at FROM {self._tables.links}"
            " WHERE domain = %s AND code = %s FOR UPDATE",
            (domain, code),
        )
        row = await cursor.fetchone()
        if row is None:
            raise LinkNotFound(f"code {code!r} not found")
        if row[1] is not None:
            raise LinkGone(f"link {code!r} was deleted")
        return int(row[0])

    async def _insert_tags(
        self, conn: _Connection, link_id: int, tags: Iterable[str]
    ) -> None:
        """Attach each distinct tag to the link."""
        distinct = sorted(set(tags))
        if distinct:
            await conn.execute(
                f"INSERT INTO {self._tables.link_tags} (link_id, tag)"
                " SELECT %s, unnest(%s::text[])",
                (link_id, distinct),
            )

    async def _fetch_link(self, conn: _Connection, link_id: int) -> Link:
        """Read back a link inside the current transaction."""
        cursor = await conn.execute(
            f"{self._tables.select_link} WHERE l.id = %s", (link_id,)
        )
        return _link(_one(await cursor.fetchone()))

    # -- clicks -----------------------------------------------------------------

    async def apply_clicks(
        self, stream: str, entries: Sequence[ClickBatchEntry]
    ) -> int:
        """Add the clicks of entries not applied before; return how many were new.

        A concurrent transaction inserting the same entry id waits on ours and
        then skips it, so a batch applied twice at once still counts once.
        """
        counts: dict[str, Mapping[int, int]] = {}
        for entry_id, per_link in entries:
            counts.setdefault(entry_id, per_link)
        if not counts:
            return 0

        t = self._tables
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"INSERT INTO {t.applied} (stream, entry_id)"
                " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING"
                " RETURNING entry_id",
                (stream, list(counts)),
            )
            new_ids = [row[0] for row in await cursor.fetchall()]

            totals = _sum_clicks(counts[entry_id] for entry_id in new_ids)
            if totals:
                await self._add_clicks(conn, totals)
        return len(new_ids)

    async def _add_clicks(self, conn: _Connection, totals: Mapping[int, int]) -> None:
        """Add ``totals`` to the links' counters in two statements, any count."""
        ids = sorted(totals)
        # Lock the rows in ascending id order first (LockRows runs above the
        # sort): two aggregators lock in the same order, so never deadlock.
        await conn.execute(
            f"SELECT 1 FROM {self._tables.links} WHERE id = ANY(%s)"
            " ORDER BY id FOR UPDATE",
            (ids,),
        )
        await conn.execute(
            f"UPDATE {self._tables.links} AS l SET clicks = l.clicks + d.n"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS d(id, n)"
            " WHERE l.id = d.id",
            (ids, [totals[link_id] for link_id in ids]),
        )

    async def prune_applied(self, older_than: datetime) -> int:
        """Forget applied entry ids recorded before ``older_than``."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"DELETE FROM {self._tables.applied} WHERE applied_at < %s",
                (_utc(older_than),),
            )
            return cursor.rowcount

    # -- API keys ---------------------------------------------------------------

    async def create_key(
        self, *, name: str, scopes: Sequence[str], key_hash: str, prefix: str
    ) -> ApiKey:
        """Store a new API key by its SHA-256 digest."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"INSERT INTO {self._tables.api_keys}"
                " (name, prefix, key_hash, scopes) VALUES (%s, %s, %s, %s)"
                f" RETURNING {_KEY_COLUMNS}",
                (name, prefix, key_hash, " ".join(scopes)),
            )
            return _api_key(_one(await cursor.fetchone()))

    async def get_key(self, key_hash: str) -> ApiKey | None:
        """Return the key with this digest, revoked or not."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {self._tables.api_keys}"
                " WHERE key_hash = %s",
                (key_hash,),
            )
            row = await cursor.fetchone()
        return None if row is None else _api_key(row)

    async def list_keys(self) -> list[ApiKey]:
        """Return every key, oldest first."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {self._tables.api_keys} ORDER BY id"
            )
            rows = await cursor.fetchall()
        return [_api_key(row) for row in rows]

    async def revoke_key(self, key_id: int) -> ApiKey | None:
        """Revoke a key, keeping the first revocation time; ``None`` if unknown."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"UPDATE {self._tables.api_keys}"
                " SET revoked_at = COALESCE(revoked_at, now())"
                f" WHERE id = %s RETURNING {_KEY_COLUMNS}",
                (key_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else _api_key(row)

    async def link_ids_created_by(self, key_id: int) -> list[int]:
        """Return the ids of every link the key created, deleted ones included."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT id FROM {self._tables.links}"
                " WHERE created_by = %s ORDER BY id",
                (key_id,),
            )
            rows = await cursor.fetchall()
        return [int(row[0]) for row in rows]

    async def link_codes(self, link_ids: Sequence[int]) -> dict[int, str]:
        """Return the code of each of these link ids that exists."""
        if not link_ids:
            return {}
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT id, code FROM {self._tables.links} WHERE id = ANY(%s)",
                ([int(i) for i in link_ids],),
            )
            rows = await cursor.fetchall()
        return {int(row[0]): str(row[1]) for row in rows}

    # -- connections ------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        """Lend a pooled connection; turn connection failures into ours."""
        if self._pool is None:
            raise BackendUnavailable(f"postgres store {self._where} is closed")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Connection]:
        """Lend a pooled connection inside a transaction committed on exit."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        """Describe a connection failure without the password of the dsn."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return BackendUnavailable(f"postgres {self._where!r} unavailable: {reason}")


class _Tables:
    """Hold the schema-qualified table names and the link select list."""

    def __init__(self, schema: str) -> None:
        quoted = f'"{schema}"'
        self.links = f"{quoted}.links"
        self.link_tags = f"{quoted}.link_tags"
        self.api_keys = f"{quoted}.api_keys"
        self.applied = f"{quoted}.applied_click_entries"
        self.select_link = (
            "SELECT l.id, l.code, l.url, l.title,"
            f" ARRAY(SELECT t.tag FROM {self.link_tags} AS t"
            " WHERE t.link_id = l.id ORDER BY t.tag),"
            " l.redirect_status, l.expires_at, l.created_at, l.updated_at,"
            " l.deleted_at, l.clicks, l.created_by, l.domain"
            f" FROM {self.links} AS l"
        )
        self.insert_links = (
            "WITH n AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS n(domain"
            " text, code text, url text, title text, redirect_status integer,"
            " expires_at timestamptz, created_by bigint, tags text[],"
            " position integer)),"
            f" l AS (INSERT INTO {self.links} (domain, code, url, title,"
            " redirect_status, expires_at, created_by) SELECT domain, code, url,"
            " title, redirect_status, expires_at, created_by FROM n"
            " ORDER BY position ON CONFLICT (domain, code) DO NOTHING RETURNING *),"
            " g AS (SELECT n.domain, n.code, unnest(n.tags) AS tag FROM n),"
            f" t AS (INSERT INTO {self.link_tags} (link_id, tag)"
            " SELECT l.id, g.tag FROM l JOIN g USING (domain, code))"
            " SELECT l.id, l.code, l.url, l.title,"
            " ARRAY(SELECT g.tag FROM g WHERE g.domain = l.domain"
            " AND g.code = l.code ORDER BY 1),"
            " l.redirect_status, l.expires_at, l.created_at, l.updated_at,"
            " l.deleted_at, l.clicks, l.created_by, l.domain FROM l"
        )


def _column_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return the column updates of ``changes``; reject unknown fields."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot update fields {sorted(unknown)!r}")
    columns = {name: value for name, value in changes.items() if name != "tags"}
    if "expires_at" in columns:
        columns["expires_at"] = _utc(columns["expires_at"])
    return columns


def _new_row(new: NewLink, position: int) -> dict[str, Any]:
    """Return one row of the JSON batch that ``insert_links`` reads."""
    return {
        "position": position,
        "domain": new.domain,
        "code": new.code,
        "url": new.url,
        "title": new.title,
        "redirect_status": new.redirect_status,
        "expires_at": _utc(new.expires_at),
        "created_by": new.created_by,
        "tags": sorted(set(new.tags)),
    }


def _check_distinct(news: Sequence[NewLink]) -> None:
    """Refuse a batch that holds one (domain, code) twice: whose row is it?"""
    if len({(new.domain, new.code) for new in news}) < len(news):
        raise ValueError("a batch of new links must not repeat a code")


def _sum_clicks(batches: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Add up the clicks per link id over several entries."""
    totals: dict[int, int] = {}
    for per_link in batches:
        for link_id, clicks in per_link.items():
            totals[link_id] = totals.get(link_id, 0) + clicks
    return totals


def _link(row: TupleRow) -> Link:
    """Build a ``Link`` from a row of ``_Tables.select_link``."""
    return Link(
        id=row[0],
        code=row[1],
        url=row[2],
        title=row[3],
        tags=tuple(row[4]),
        redirect_status=row[5],
        expires_at=_utc(row[6]),
        created_at=_aware(row[7]),
        updated_at=_aware(row[8]),
        deleted_at=_utc(row[9]),
        clicks=row[10],
        created_by=row[11],
        domain=row[12],
    )


def _api_key(row: TupleRow) -> ApiKey:
    """Build an ``ApiKey`` from a row of ``_KEY_COLUMNS``."""
    return ApiKey(
        id=row[0],
        name=row[1],
        prefix=row[2],
        scopes=tuple(row[3].split()),
        created_at=_aware(row[4]),
        revoked_at=_utc(row[5]),
        last_used_at=_utc(row[6]),
    )


def _one(row: TupleRow | None) -> TupleRow:
    """Return the row a statement must have produced."""
    assert row is not None, "statement returned no row"
    return row


def _aware(value: datetime) -> datetime:
    """Return a timestamp as an aware UTC datetime."""
    return value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """Return ``value`` in UTC; refuse a naive datetime, whose zone is a guess."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError(f"datetime {value!r} has no time zone")
    return value.astimezone(UTC)
