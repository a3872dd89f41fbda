"""Store links, API keys and click counters in one SQLite file.

One connection writes, under an asyncio lock and ``BEGIN IMMEDIATE``, so a
write transaction holds the file's write lock from its first statement; the
busy timeout makes other processes on the same file wait for it. A few more
connections serve reads, which WAL mode lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from boltlink.errors import BackendUnavailable, CodeTaken, LinkGone, LinkNotFound
from boltlink.models import ApiKey, Link, NewLink
from boltlink.store.base import UPDATABLE_FIELDS, ClickBatchEntry

__all__ = ["SqliteStore"]

logger = logging.getLogger("boltlink.db")

BUSY_TIMEOUT_MS = 5000

_SELECT_LINK = (
    "SELECT l.id, l.code, l.url, l.title,"
    " (SELECT json_group_array(t.tag) FROM link_tags AS t WHERE t.link_id = l.id),"
    " l.redirect_status, l.expires_at, l.created_at, l.updated_at,"
    " l.deleted_at, l.clicks, l.created_by, l.domain"
    " FROM links AS l"
)

_KEY_COLUMNS = "id, name, prefix, scopes, created_at, revoked_at, last_used_at"

_Row = Sequence[Any]


class SqliteStore:
    """Keep links in a SQLite file; the ``LinkStore`` of single-node deployments."""

    def __init__(self, path: str, *, pool_size: int = 10) -> None:
        self._path = path
        self._reader_count = max(1, pool_size)
        self._connections: list[aiosqlite.Connection] = []
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._open = False

    async def open(self) -> None:
        """Open the writer connection and the reader connections."""
        with _mapped_errors(self._path):
            self._writer = await self._connect()
            for _ in range(self._reader_count):
                reader = await self._connect(query_only=True)
                self._readers.put_nowait(reader)
        self._open = True
        logger.info(
            "sqlite store open path=%s readers=%d", self._path, self._reader_count
        )

    async def close(self) -> None:
        """Close every connection."""
        self._open = False
        connections, self._connections = self._connections, []
        for conn in connections:
            await conn.close()
        self._writer = None
        self._readers = asyncio.Queue()

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise ``BackendUnavailable`` on failure."""
        async with self._read() as conn:
            await conn.execute_fetchall("SELECT 1")

    async def _connect(self, *, query_only: bool = False) -> aiosqlite.Connection:
        """Open one connection in autocommit mode, WAL, foreign keys on."""
        conn = await aiosqlite.connect(self._path, isolation_level=None)
        self._connections.append(conn)
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        if query_only:
            await conn.execute("PRAGMA query_only = ON")
        return conn

    # -- links ------------------------------------------------------------------

    async def create_link(self, new: NewLink) -> Link:
        """Insert a link and its tags; raise ``CodeTaken`` if the code exists."""
        [link] = await self.create_links([new])
        if link is None:
            raise CodeTaken(f"code {new.code!r} already taken", field="code")
        return link

    async def create_links(self, news: Sequence[NewLink]) -> list[Link | None]:
        """Insert links and their tags; None for each whose code is taken."""
        if len({(new.domain, new.code) for new in news}) < len(news):
            raise ValueError("a batch of new links must not repeat a code")
        if not news:
            return []
        # One write transaction for the batch: one commit, all or nothing.
        now = _text(_now())
        created: list[Link | None] = []
        async with self._write() as conn:
            for new in news:
                rows = await conn.execute_fetchall(
                    "INSERT INTO links (domain, code, url, title, redirect_status,"
                    " expires_at, created_at, updated_at, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (domain, code) DO NOTHING RETURNING id",
                    (
                        new.domain,
                        new.code,
                        new.url,
                        new.title,
                        new.redirect_status,
                        _text(new.expires_at),
                        now,
                        now,
                        new.created_by,
                    ),
                )
                row = next(iter(rows), None)
                if row is None:
                    created.append(None)
                    continue
                await _insert_tags(conn, int(row[0]), new.tags)
                created.append(await _fetch_link(conn, int(row[0])))
        return created

    async def get_link(self, code: str, domain: str = "") -> Link | None:
        """Return the link with exactly this code, deleted ones included."""
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                f"{_SELECT_LINK} WHERE l.domain = ? AND l.code = ?", (domain, code)
            )
        return next((_link(row) for row in rows), None)

    async def list_links(
        self, *, limit: int, before_id: int | None = None, tag: str | None = None
    ) -> list[Link]:
        """Return live links newest first, ids below ``before_id``, by tag."""
        query = (
            f"{_SELECT_LINK} WHERE l.deleted_at IS NULL"
            " AND (:before IS NULL OR l.id < :before)"
            " AND (:tag IS NULL OR EXISTS (SELECT 1 FROM link_tags AS f"
            " WHERE f.link_id = l.id AND f.tag = :tag))"
            " ORDER BY l.id DESC LIMIT :limit"
        )
        params = {"before": before_id, "tag": tag, "limit": limit}
        async with self._read() as conn:
            rows = await conn.execute_fetchall(query, params)
        return [_link(row) for row in rows]

    async def update_link(
        self, code: str, changes: Mapping[str, Any], domain: str = ""
    ) -> Link:
        """Apply ``changes`` to a live link; ``tags`` replaces the whole set."""
        columns = _column_changes(changes)
        assignments = "".join(f", {name} = ?" for name in columns)
        async with self._write() as conn:
            link_id = await _live_link_id(conn, code, domain)
            await conn.execute(
                f"UPDATE links SET updated_at = ?{assignments} WHERE id = ?",
                (_text(_now()), *columns.values(), link_id),
            )

            if "tags" in changes:
                await conn.execute(
                    "DELETE FROM link_tags WHERE link_id = ?", (link_id,)
                )
                await _insert_tags(conn, link_id, changes["tags"])
            return await _fetch_link(conn, link_id)

    async def delete_link(self, code: str, domain: str = "") -> Link:
        """Mark a live link deleted and return its tombstone."""
        async with self._write() as conn:
            link_id = await _live_link_id(conn, code, domain)
            await conn.execute(
                "UPDATE links SET deleted_at = ? WHERE id = ?", (_text(_now()), link_id)
            )
            return await _fetch_link(conn, link_id)

    # -- clicks -----------------------------------------------------------------

    async def apply_clicks(
        self, stream: str, entries: Sequence[ClickBatchEntry]
    ) -> int:
        """Add the clicks of entries not applied before; return how many were new."""
        if not entries:
            return 0

        now = _text(_now())
        new_entries: list[Mapping[int, int]] = []
        async with self._write() as conn:
            for entry_id, per_link in entries:
                cursor = await conn.execute(
                    "INSERT OR IGNORE INTO applied_click_entries"
                    " (stream, entry_id, applied_at) VALUES (?, ?, ?)",
                    (stream, entry_id, now),
                )
                if cursor.rowcount == 1:
                    new_entries.append(per_link)

            # Ascending id order, as on Postgres, though SQLite locks the file.
            totals = _sum_clicks(new_entries)
            await conn.executemany(
                "UPDATE links SET clicks = clicks + ? WHERE id = ?",
                [(totals[link_id], link_id) for link_id in sorted(totals)],
            )
        return len(new_entries)

    async def prune_applied(self, older_than: datetime) -> int:
        """Forget applied entry ids recorded before ``older_than``."""
        async with self._write() as conn:
            cursor = await conn.execute(
                "DELETE FROM applied_click_entries WHERE applied_at < ?",
                (_text(older_than),),
            )
            return cursor.rowcount

    # -- API keys ---------------------------------------------------------------

    async def create_key(
        self, *, name: str, scopes: Sequence[str], key_hash: str, prefix: str
    ) -> ApiKey:
        """Store a new API key by its SHA-256 digest."""
        async with self._write() as conn:
            rows = await conn.execute_fetchall(
                "INSERT INTO api_keys (name, prefix, key_hash, scopes, created_at)"
                f" VALUES (?, ?, ?, ?, ?) RETURNING {_KEY_COLUMNS}",
                (name, prefix, key_hash, " ".join(scopes), _text(_now())),
            )
        return _api_key(next(iter(rows)))

    async def get_key(self, key_hash: str) -> ApiKey | None:
        """Return the key with this digest, revoked or not."""
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            )
        return next((_api_key(row) for row in rows), None)

    async def list_keys(self) -> list[ApiKey]:
        """Return every key, oldest first."""
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id"
            )
        return [_api_key(row) for row in rows]

    async def revoke_key(self, key_id: int) -> ApiKey | None:
        """Revoke a key, keeping the first revocation time; ``None`` if unknown."""
        async with self._write() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?)"
                f" WHERE id = ? RETURNING {_KEY_COLUMNS}",
                (_text(_now()), key_id),
            )
        return next((_api_key(row) for row in rows), None)

    async def link_ids_created_by(self, key_id: int) -> list[int]:
        """Return the ids of every link the key created, deleted ones included."""
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id FROM links WHERE created_by = ? ORDER BY id", (key_id,)
            )
        return [int(row[0]) for row in rows]

    async def link_codes(self, link_ids: Sequence[int]) -> dict[int, str]:
        """Return the code of each of these link ids that exists."""
        if not link_ids:
            return {}
        # One JSON array parameter, not one placeholder per id: SQLite caps
        # the number of host parameters.
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id, code FROM links"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in link_ids]),),
            )
        return {int(row[0]): str(row[1]) for row in rows}

    # -- connections ------------------------------------------------------------

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Lend a reader connection; each statement reads one snapshot."""
        # A closed store has no readers to wait for: fail at once instead.
        if not self._open:
            raise BackendUnavailable(f"sqlite store {self._path!r} is closed")
        readers = self._readers
        conn = await readers.get()
        try:
            with _mapped_errors(self._path):
                yield conn
        finally:
            readers.put_nowait(conn)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """Lend the writer inside ``BEGIN IMMEDIATE``, committed on exit."""
        if self._writer is None:
            raise BackendUnavailable(f"sqlite store {self._path!r} is closed")
        conn = self._writer
        async with self._write_lock:
            with _mapped_errors(self._path):
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")


@contextmanager
def _mapped_errors(path: str) -> Iterator[None]:
    """Turn SQLite's operational errors (locked, unreadable) into ours."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        message = f"sqlite database {path!r} unavailable: {exc}"
        raise BackendUnavailable(message) from exc


async def _live_link_id(conn: aiosqlite.Connection, code: str, domain: str) -> int:
    """Return the id of the live link with this code; raise if missing or deleted."""
    rows = await conn.execute_fetchall(
        "SELECT id, deleted_at FROM links WHERE domain = ? AND code = ?",
        (domain, code),
    )
    row = next(iter(rows), None)
    if row is None:
        raise LinkNotFound(f"code {code!r} not found")
    if row[1] is not None:
        raise LinkGone(f"link {code!r} was deleted")
    return int(row[0])


async def _insert_tags(
    conn: aiosqlite.Connection, link_id: int, tags: Iterable[str]
) -> None:
    """Attach each distinct tag to the link."""
    await conn.executemany(
        "INSERT INTO link_tags (link_id, tag) VALUES (?, ?)",
        [(link_id, tag) for tag in sorted(set(tags))],
    )


async def _fetch_link(conn: aiosqlite.Connection, link_id: int) -> Link:
    """Read back a link inside the current transaction."""
    rows = await conn.execute_fetchall(f"{_SELECT_LINK} WHERE l.id = ?", (link_id,))
    return _link(next(iter(rows)))


def _column_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return the column updates of ``changes``; reject unknown fields."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot update fields {sorted(unknown)!r}")
    columns = {name: value for name, value in changes.items() if name != "tags"}
    if "expires_at" in columns:
        columns["expires_at"] = _text(columns["expires_at"])
    return columns


def _sum_clicks(batches: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Add up the clicks per link id over several entries."""
    totals: dict[int, int] = {}
    for per_link in batches:
        for link_id, clicks in per_link.items():
            totals[link_id] = totals.get(link_id, 0) + clicks
    return totals


def _link(row: _Row) -> Link:
    """Build a ``Link`` from a row of ``_SELECT_LINK``."""
    return Link(
        id=row[0],
        code=row[1],
        url=row[2],
        title=row[3],
        tags=tuple(sorted(json.loads(row[4]))),
        redirect_status=row[5],
        expires_at=_parse(row[6]),
        created_at=_parse_required(row[7]),
        updated_at=_parse_required(row[8]),
        deleted_at=_parse(row[9]),
        clicks=row[10],
        created_by=row[11],
        domain=row[12],
    )


def _api_key(row: _Row) -> ApiKey:
    """Build an ``ApiKey`` from a row of ``_KEY_COLUMNS``."""
    return ApiKey(
        id=row[0],
        name=row[1],
        prefix=row[2],
        scopes=tuple(row[3].split()),
        created_at=_parse_required(row[4]),
        revoked_at=_parse(row[5]),
        last_used_at=_parse(row[6]),
    )


def _now() -> datetime:
    """Return the current time, aware, in UTC."""
    return datetime.now(UTC)


def _text(value: datetime | None) -> str | None:
    """Format ``value`` as fixed-width UTC ISO 8601, so text order is time order."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError(f"datetime {value!r} has no time zone")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(value: str | None) -> datetime | None:
    """Read back a timestamp written by ``_text``."""
    return None if value is None else datetime.fromisoformat(value)


def _parse_required(value: str) -> datetime:
    """Read back a timestamp that cannot be NULL."""
    return datetime.fromisoformat(value)
