"""Keep click events in ClickHouse (a server, or chDB in the data folder).

Inserts are idempotent twice over: each block carries an insert
deduplication token derived from its stream entry ids, so a retried block
is dropped by ClickHouse itself, raw table and rollups alike
(``deduplicate_blocks_in_dependent_materialized_views``); and the raw table
is a ``ReplacingMergeTree`` keyed on the event id, so an event inserted
again in another block collapses at merge time and is never counted twice
by ``FINAL`` reads. ``docs/analytics.md`` spells out what that leaves.

chDB allows one process per data folder, and one client per process is the
safe way to use it: :func:`acquire` hands every caller in a process the
same store for the same DSN (the ingest sink and the stats API of the
embedded profile), and :func:`release` closes it after its last user.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol

import orjson

from boltlink.analytics.schema import DIMS_BY_DAY, RAW_COLUMNS, Schema
from boltlink.analytics.stream import ByteStream
from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings

__all__ = [
    "AnalyticsReader",
    "AnalyticsStore",
    "ExportStream",
    "acquire",
    "count_clicks",
    "dedup_token",
    "opened_here",
    "release",
]

COLUMN_NAMES = [name for name, _ in RAW_COLUMNS]

# Insert settings of every block: carry the token to the rollups, and on a
# cluster wait until every shard has the block so a retry sees the token.
_INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}
_CLUSTER_INSERT_SETTINGS = {"distributed_foreground_insert": 1}
_TS = COLUMN_NAMES.index("ts")


class ExportStream(Protocol):
    """The bytes of one export, started before the response begins."""

    async def start(self) -> None:
        """Begin; a failing query fails here."""

    def chunks(self) -> AsyncIterator[bytes]:
        """Yield the bytes in order."""

    async def aclose(self) -> None:
        """Stop early and let go of what the export holds."""


class AnalyticsReader(Protocol):
    """What the analytics API reads through: a store, or the chDB relay."""

    @property
    def embedded(self) -> bool:
        """Tell whether ClickHouse is chDB."""

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a read query with bound parameters; return its rows."""

    async def ping(self) -> None:
        """Check that ClickHouse answers."""

    async def count_clicks(self, link_id: int | None = None) -> int:
        """Return the exact number of stored clicks, of one link or of all."""

    def export(self, name: str, sql: str, params: dict[str, Any]) -> ExportStream:
        """Return a stream of ``sql``'s rows in export format ``name``."""


async def count_clicks(reader: AnalyticsReader, link_id: int | None = None) -> int:
    """Return the exact number of clicks ``reader`` stores, of one link or all."""
    where = "" if link_id is None else " WHERE link_id = {link:UInt64}"
    rows = await reader.query(
        f"SELECT count() FROM clicks FINAL{where}", {"link": link_id or 0}
    )
    return int(rows[0][0])


def _json_columns(columns: Sequence[Sequence[Any]]) -> bytes:
    """Return ``columns`` as ClickHouse's ``JSONCompactColumns``: one array each.

    JSON strings hold any text exactly (orjson writes UTF-8 and escapes
    quotes, backslashes and control characters), integers are exact up to
    2^64 - 1, and ``ts`` is sent as the number ``<seconds>.<milliseconds>``,
    which ClickHouse reads into ``DateTime64(3)`` digit for digit, with no
    time zone involved. The number is ``ms / 1000``: a double whose
    shortest form (what orjson writes) is those digits, since every time a
    click may carry has at most 13 significant digits and doubles keep 15;
    a tenth of the cost of formatting the text in Python.
    """
    encoded = list(columns)
    encoded[_TS] = [ms / 1000 for ms in columns[_TS]]
    return orjson.dumps(encoded)


def dedup_token(stream: str, entry_ids: Sequence[str]) -> str:
    """Return the insert deduplication token of a block of entries."""
    digest = hashlib.sha256(stream.encode())
    for entry_id in entry_ids:
        digest.update(b"\0" + entry_id.encode())
    return digest.hexdigest()


class AnalyticsStore:
    """Create the analytics schema, write click rows and run queries.

    clickhouse-connect is synchronous; calls run in a worker thread, one at a
    time, since a chDB session is not safe to share between threads at once.
    """

    def __init__(self, client: Any, schema: Schema | None = None) -> None:
        self._client = client
        self.schema = schema or Schema()
        # Without an explicit schema the caller does not know the TTL
        # setting, so migrating must leave the table's TTL as it is.
        self._manage_ttl = schema is not None
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, client: Any, settings: Settings) -> AnalyticsStore:
        """Return a store whose schema follows ``settings``."""
        schema = Schema(
            cluster=settings.clickhouse_cluster, ttl_days=settings.clicks_ttl_days
        )
        return cls(client, schema)

    def migrate(self) -> None:
        """Create what does not exist yet and apply the TTL setting."""
        with self._lock:
            projected = self._has_projection(DIMS_BY_DAY)
            for statement in self.schema.statements():
                self._client.command(statement)
            # A projection added to a table that holds parts is built for
            # them by a background mutation; until it ends, ClickHouse reads
            # those parts without it, still exactly.
            if not projected:
                self._client.command(self.schema.materialize(DIMS_BY_DAY))
            if self._manage_ttl and not self.schema.ttl_days:
                self._remove_ttl()

    def _has_projection(self, name: str) -> bool:
        table = self.schema.local("clicks_dims_hourly")
        exists = str(self._client.command(f"EXISTS TABLE {table}")).strip() == "1"
        if not exists:
            return False
        create = str(self._client.command(f"SHOW CREATE TABLE {table}"))
        return f"PROJECTION {name}" in create

    def _remove_ttl(self) -> None:
        try:
            self._client.command(self.schema.remove_ttl())
        except Exception as exc:
            # ClickHouse refuses to remove a TTL that was never set.
            if "TTL" not in str(exc):
                raise

    def _locked(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(*args, **kwargs)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(self._locked, fn, *args, **kwargs)
        except Exception as exc:
            raise BackendUnavailable(f"clickhouse call failed: {exc}") from exc

    async def insert_columns(self, token: str, columns: Sequence[Sequence[Any]]) -> int:
        """Insert one block of columns under ``token``; return the row count.

        One sequence per column of ``RAW_COLUMNS``, in its order, all of one
        length; ``ts`` as epoch milliseconds.
        """
        if len(columns) != len(COLUMN_NAMES):
            raise ValueError(f"{len(columns)} columns for {len(COLUMN_NAMES)}")
        count = len(columns[0])
        if any(len(column) != count for column in columns):
            raise ValueError("columns of different lengths")
        if not count:
            return 0
        settings: dict[str, Any] = {
            **_INSERT_SETTINGS,
            "insert_deduplication_token": token,
        }
        if self.schema.cluster:
            settings.update(_CLUSTER_INSERT_SETTINGS)
        await self._call(self._insert_encoded, columns, settings)
        return count

    def _insert_encoded(
        self, columns: Sequence[Sequence[Any]], settings: dict[str, Any]
    ) -> None:
        # The block goes as bytes ClickHouse parses itself (C++, without
        # the GIL in chDB), not as Python values clickhouse-connect would
        # encode to Native in Python: the same raw_insert for a server
        # (over HTTP) and for chDB (a file read by INSERT ... FROM INFILE).
        self._client.raw_insert(
            "clicks",
            COLUMN_NAMES,
            _json_columns(columns),
            settings=settings,
            fmt="JSONCompactColumns",
        )

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a read query with bound parameters; return its rows."""
        result = await self._call(self._client.query, sql, parameters=parameters)
        return [tuple(row) for row in result.result_rows]

    def stream(self, produce: Callable[[Any], Iterator[bytes]]) -> ByteStream:
        """Return a stream of the chunks ``produce(client)`` yields.

        The stream holds the store's lock from its start until it ends or
        is closed: other calls of this process wait for it meanwhile.
        """
        return ByteStream(lambda: produce(self._client), self._lock)

    def export(self, name: str, sql: str, params: dict[str, Any]) -> ByteStream:
        """Return a stream of ``sql``'s rows in export format ``name``."""
        from boltlink.analytics.export import export_producer

        return self.stream(export_producer(name, self.embedded, sql, params))

    @property
    def embedded(self) -> bool:
        """Tell whether the client is chDB, in this process."""
        return str(getattr(self._client, "uri", "")).startswith("chdb:")

    async def count_clicks(self, link_id: int | None = None) -> int:
        """Return the exact number of stored clicks, of one link or of all."""
        return await count_clicks(self, link_id)

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._call(self._client.command, "SELECT 1")

    def close(self) -> None:
        """Close the client."""
        self._client.close()


# -- one store per DSN per process --------------------------------------------

_SHARED: dict[str, tuple[AnalyticsStore, int]] = {}
_SHARED_LOCK = threading.Lock()


def acquire(settings: Settings) -> AnalyticsStore:
    """Return this process's migrated store for the settings' DSN.

    Blocking (it may connect and migrate): call it from a worker thread.
    """
    from boltlink.backends import connect_clickhouse

    dsn = settings.clickhouse_dsn
    with _SHARED_LOCK:
        if dsn in _SHARED:
            store, users = _SHARED[dsn]
            _SHARED[dsn] = (store, users + 1)
            return store
        store = AnalyticsStore.for_settings(connect_clickhouse(settings), settings)
        store.migrate()
        _SHARED[dsn] = (store, 1)
        return store


def opened_here(dsn: str) -> bool:
    """Tell whether this process holds an open store for ``dsn``."""
    with _SHARED_LOCK:
        return dsn in _SHARED


def release(store: AnalyticsStore) -> None:
    """Give back a store from :func:`acquire`; the last user closes it."""
    with _SHARED_LOCK:
        for dsn, (shared, users) in list(_SHARED.items()):
            if shared is store:
                if users > 1:
                    _SHARED[dsn] = (shared, users - 1)
                    return
                del _SHARED[dsn]
                break
    store.close()
