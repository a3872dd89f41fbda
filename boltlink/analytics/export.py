"""Stream raw click events out of ClickHouse as CSV, JSON lines or Parquet.

ClickHouse writes every format itself and the bytes pass through a small
queue (:class:`boltlink.analytics.stream.ByteStream`), so memory stays
bounded by a few blocks whatever the number of events. chDB streams only
formats without a file-wide header or footer (its ``send_query`` encodes
each block on its own), so on chDB:

- ``csv`` is ClickHouse's ``CSV`` after a header line written here, the
  same bytes ``CSVWithNames`` would give;
- ``parquet`` is written by pyarrow, one row group per ClickHouse block of
  the ``Native`` stream, with the column types of the raw table.

A ClickHouse server streams ``CSVWithNames``, ``JSONEachRow`` and
``Parquet`` over HTTP as they are produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from boltlink.analytics.schema import RAW_COLUMNS
from boltlink.analytics.scope import Scope

__all__ = [
    "EXPORT_COLUMNS",
    "FORMATS",
    "ExportFormat",
    "export_producer",
    "export_sql",
    "parquet_chunks",
]

#: The exported columns: every raw column, in table order.
EXPORT_COLUMNS = [name for name, _ in RAW_COLUMNS]

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its media type, file suffix and ClickHouse names."""

    media_type: str
    suffix: str
    server: str
    embedded: str


FORMATS = {
    "csv": ExportFormat("text/csv; charset=utf-8", "csv", "CSVWithNames", "CSV"),
    "jsonl": ExportFormat(
        "application/x-ndjson", "jsonl", "JSONEachRow", "JSONEachRow"
    ),
    "parquet": ExportFormat(
        "application/vnd.apache.parquet", "parquet", "Parquet", "Native"
    ),
}


def export_sql(scope: Scope) -> str:
    """Return the query of a scope's raw events, oldest first per link."""
    columns = ", ".join(EXPORT_COLUMNS)
    return (
        f"SELECT {columns} FROM clicks FINAL WHERE {scope.link_condition()} "
        "AND ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')} "
        f"AND {scope.bot_condition()} ORDER BY link_id, ts, event_id"
    )


def export_producer(
    name: str, embedded: bool, sql: str, params: dict[str, Any]
) -> Callable[[Any], Iterator[bytes]]:
    """Return what, given a client, yields the bytes of export format ``name``."""
    fmt = FORMATS[name]
    if not embedded:
        return lambda client: raw_chunks(client, sql, params, fmt.server)
    if name == "parquet":
        return lambda client: parquet_chunks(client, sql, params)
    if name == "csv":
        return lambda client: _with_header(raw_chunks(client, sql, params, "CSV"))
    return lambda client: raw_chunks(client, sql, params, fmt.embedded)


def _with_header(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # chDB streams plain CSV only; the header line makes it CSVWithNames.
    yield csv_header()
    yield from chunks


def csv_header() -> bytes:
    """Return the header line ``CSVWithNames`` writes for the export columns."""
    return (",".join(f'"{name}"' for name in EXPORT_COLUMNS) + "\n").encode()


def raw_chunks(
    client: Any, sql: str, params: dict[str, Any], fmt: str
) -> Iterator[bytes]:
    """Yield the bytes of ``sql`` in ClickHouse format ``fmt``, a chunk at a time."""
    stream = client.raw_stream(sql, parameters=params, fmt=fmt)
    try:
        while chunk := stream.read(_CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()


def parquet_chunks(client: Any, sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    """Yield a Parquet file of ``sql``'s rows, one row group per block."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = pa.schema([(name, _arrow_type(kind)) for name, kind in RAW_COLUMNS])
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        with client.query_column_block_stream(sql, parameters=params) as blocks:
            for block in blocks:
                arrays = [
                    pa.array(c, type=t)
                    for c, t in zip(block, schema.types, strict=True)
                ]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                yield sink.take()
    finally:
        writer.close()
    yield sink.take()


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    if kind.startswith("DateTime64(3"):
        return pa.timestamp("ms", tz="UTC")
    if kind.startswith("UInt64"):
        return pa.uint64()
    if kind.startswith("UInt8"):
        return pa.uint8()
    return pa.string()


class _Sink:
    """A write-only file that hands over what was written since the last take."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data
