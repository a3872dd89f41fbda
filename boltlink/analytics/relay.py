"""Let every process read analytics from the one process that holds chDB.

chDB allows one process per data folder, and the process that holds it is
the one running ``ingest`` (``boltlink ingest``, or the worker of
``boltlink serve`` that holds ``pipeline.lock``). That process serves the
queries of the others over a local socket: the stats API of every other
worker sends its SQL there and gets the rows, or the bytes of an export,
back. With a ClickHouse server no relay is needed; every process connects.

On Linux the socket lives in the abstract namespace (no file, no path
length limit) and the server answers only peers of its own user id
(``SO_PEERCRED``); elsewhere it is a file beside the chDB folder.

Each message is one frame: a tag byte, a 4-byte big-endian length and the
payload. Requests and rows are JSON, with dates and times tagged so they
come back as the same Python types.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

import orjson

from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings

__all__ = [
    "RelayServer",
    "RelayedStore",
    "chdb_folder",
    "reads_through_relay",
    "relay_address",
]

logger = logging.getLogger("boltlink.analytics")

_HEADER = struct.Struct(">cI")
_REQUEST, _ROWS, _CHUNK, _END, _ERROR = b"Q", b"R", b"D", b"Z", b"E"
_MAX_REQUEST_BYTES = 1 << 20
_CONNECT_TIMEOUT = 1.0
_QUERY_TIMEOUT = 30.0


def chdb_folder(settings: Settings) -> str:
    """Return the chDB folder of ``settings`` (whose DSN must be chDB)."""
    return settings.clickhouse_dsn.removeprefix("chdb://")


def reads_through_relay(settings: Settings) -> bool:
    """Tell whether this process must read analytics through the relay.

    It must unless ClickHouse is a server, or this process opened the chDB
    folder itself, or it is the single worker that runs the consumers (and
    so will open it).
    """
    from boltlink.analytics.store import opened_here

    dsn = settings.clickhouse_dsn
    if not dsn.startswith("chdb:") or opened_here(dsn):
        return False
    return not (settings.inprocess_workers and settings.workers == 1)


def relay_address(folder: str) -> str:
    """Return the socket address of the relay for the chDB ``folder``."""
    if sys.platform.startswith("linux"):
        digest = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:32]
        return "\0boltlink-chdb-" + digest
    return os.path.realpath(folder) + ".sock"


# -- values: JSON with tagged dates and times ---------------------------------


def _tag(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$d": value.isoformat()}
    if isinstance(value, tuple | list):
        return [_tag(item) for item in value]
    if isinstance(value, dict):
        return {key: _tag(item) for key, item in value.items()}
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
        if "$d" in value:
            return date.fromisoformat(value["$d"])
        return {key: _untag(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_untag(item) for item in value]
    return value


def _dumps(value: Any) -> bytes:
    return orjson.dumps(_tag(value))


def _loads(raw: bytes) -> Any:
    return _untag(orjson.loads(raw))


# -- frames -------------------------------------------------------------------


async def _write(writer: asyncio.StreamWriter, tag: bytes, payload: bytes) -> None:
    writer.write(_HEADER.pack(tag, len(payload)) + payload)
    await writer.drain()


async def _read(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bytes]:
    tag, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > limit:
        raise ValueError(f"relay frame of {size} bytes is over {limit}")
    return tag, await reader.readexactly(size)


# -- the server, in the process that holds chDB --------------------------------


class RelayServer:
    """Answer the analytics reads of other processes from ``store``."""

    def __init__(self, store: Any, address: str) -> None:
        self._store = store
        self._address = address
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on the relay address."""
        if not self._address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address)
        # The socket is made here, not by the loop: uvloop refuses an
        # abstract address given as a path.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self._address)
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def close(self) -> None:
        """Stop listening and wait for the requests in progress."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if not self._address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if not _same_user(writer):
                return
            _, raw = await _read(reader, _MAX_REQUEST_BYTES)
            await self._answer(_loads(raw), writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:
            with contextlib.suppress(ConnectionError):
                await _write(writer, _ERROR, str(exc).encode())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request: dict[str, Any], writer: Any) -> None:
        op = request.get("op")
        if op == "ping":
            await self._store.ping()
            await _write(writer, _ROWS, b"[]")
        elif op == "query":
            rows = await self._store.query(request["sql"], request["params"])
            await _write(writer, _ROWS, _dumps(rows))
        elif op == "export":
            await self._export(request, writer)
        else:
            raise ValueError(f"unknown relay operation {op!r}")

    async def _export(self, request: dict[str, Any], writer: Any) -> None:
        stream = self._store.export(request["name"], request["sql"], request["params"])
        await stream.start()
        try:
            async for chunk in stream.chunks():
                await _write(writer, _CHUNK, chunk)
        finally:
            await stream.aclose()
        await _write(writer, _END, b"")


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or not sys.platform.startswith("linux"):
        # A socket file beside the data folder has the folder's permissions.
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


# -- the client, in every other process -----------------------------------------


class RelayedStore:
    """Read analytics through the relay of the process that holds chDB."""

    embedded = True

    def __init__(self, address: str) -> None:
        self._address = address

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.sock_connect(sock, self._address), _CONNECT_TIMEOUT
            )
            return await asyncio.open_unix_connection(sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise BackendUnavailable(
                "analytics on chDB are served by the process running ingest, "
                f"and none answers: {exc}"
            ) from exc

    async def _call(self, request: dict[str, Any]) -> Any:
        reader, writer = await self._open()
        try:
            await _write(writer, _REQUEST, _dumps(request))
            tag, payload = await asyncio.wait_for(
                _read(reader, 1 << 30), _QUERY_TIMEOUT
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise BackendUnavailable(f"analytics relay failed: {exc!r}") from exc
        finally:
            writer.close()
        if tag == _ERROR:
            raise BackendUnavailable(f"clickhouse call failed: {payload.decode()}")
        return _loads(payload)

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a read query in the holder of chDB; return its rows."""
        rows = await self._call({"op": "query", "sql": sql, "params": parameters})
        return [tuple(row) for row in rows]

    async def ping(self) -> None:
        """Check that the holder of chDB answers."""
        await self._call({"op": "ping"})

    async def count_clicks(self, link_id: int | None = None) -> int:
        """Return the exact number of stored clicks, of one link or of all."""
        from boltlink.analytics.store import count_clicks

        return await count_clicks(self, link_id)

    def export(self, name: str, sql: str, params: dict[str, Any]) -> RelayStream:
        """Return a stream of an export run in the holder of chDB."""
        request = {"op": "export", "name": name, "sql": sql, "params": params}
        return RelayStream(self, request)

    def close(self) -> None:
        """Nothing to close: each call opens its own connection."""


class RelayStream:
    """The bytes of one relayed export, with the interface of a ByteStream."""

    def __init__(self, store: RelayedStore, request: dict[str, Any]) -> None:
        self._store = store
        self._request = request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._first: bytes | None = None

    async def start(self) -> None:
        """Send the request and wait for the first chunk or the error."""
        self._reader, self._writer = await self._store._open()
        await _write(self._writer, _REQUEST, _dumps(self._request))
        self._first = await self._next()

    async def _next(self) -> bytes:
        assert self._reader is not None, "start() comes first"
        try:
            tag, payload = await _read(self._reader, 1 << 30)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise BackendUnavailable(f"analytics relay failed: {exc!r}") from exc
        if tag == _ERROR:
            raise BackendUnavailable(f"clickhouse export failed: {payload.decode()}")
        return payload if tag == _CHUNK else b""

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield every chunk; close the connection when done or abandoned."""
        try:
            chunk = self._first if self._first is not None else await self._next()
            while chunk:
                yield chunk
                chunk = await self._next()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; the holder stops its export."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
