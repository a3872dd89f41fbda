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

The server acknowledges a request as soon as it has read it, then sends a
heartbeat every second while the query runs, so a client tells a holder
that is busy (a heavy query may take many seconds) from one that is
stopped or stuck: no acknowledgement within :data:`ANSWER_TIMEOUT`, or no
frame for :data:`IDLE_TIMEOUT` after it, and the call fails with
:class:`BackendUnavailable` (a 503 in the stats API) instead of waiting.
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
from collections.abc import AsyncIterator, Awaitable
from datetime import date, datetime
from typing import Any, TypeVar

import orjson

from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings

__all__ = [
    "ANSWER_TIMEOUT",
    "CONNECT_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "IDLE_TIMEOUT",
    "QUERY_TIMEOUT",
    "RelayServer",
    "RelayedStore",
    "chdb_folder",
    "reads_through_relay",
    "relay_address",
]

logger = logging.getLogger("boltlink.analytics")

_T = TypeVar("_T")

_HEADER = struct.Struct(">cI")
_REQUEST, _ROWS, _CHUNK, _END, _ERROR = b"Q", b"R", b"D", b"Z", b"E"
_ACK, _BEAT = b"A", b"H"
_MAX_REQUEST_BYTES = 1 << 20
_MAX_ANSWER_BYTES = 1 << 30

#: Seconds to connect: a holder whose listen backlog is full does not accept.
CONNECT_TIMEOUT = 1.0
#: Seconds the holder has to acknowledge a request; a live one takes
#: milliseconds, whatever it is doing.
ANSWER_TIMEOUT = 2.0
#: Seconds between the holder's heartbeats while a query or export runs.
HEARTBEAT_INTERVAL = 1.0
#: Seconds without any frame after which a holder counts as stopped.
IDLE_TIMEOUT = 5.0
#: Seconds a relayed query may run in all (an export has no such bound).
QUERY_TIMEOUT = 30.0


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


async def _read_within(
    reader: asyncio.StreamReader, timeout: float, silence: str
) -> tuple[bytes, bytes]:
    """Return the next frame; raise ``BackendUnavailable`` after ``timeout``."""
    try:
        return await asyncio.wait_for(_read(reader, _MAX_ANSWER_BYTES), timeout)
    except TimeoutError:
        raise BackendUnavailable(
            f"the process holding chDB {silence} within {timeout} s"
        ) from None
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        raise BackendUnavailable(f"analytics relay failed: {exc!r}") from exc


async def _acknowledged(reader: asyncio.StreamReader) -> None:
    """Wait for the holder to acknowledge the request just sent."""
    tag, _ = await _read_within(reader, ANSWER_TIMEOUT, "did not answer")
    if tag != _ACK:
        raise BackendUnavailable(f"analytics relay sent {tag!r} before its ack")


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Return the next frame that is not a heartbeat."""
    while True:
        tag, payload = await _read_within(reader, IDLE_TIMEOUT, "sent nothing")
        if tag != _BEAT:
            return tag, payload


async def _beating(writer: asyncio.StreamWriter, work: Awaitable[_T]) -> _T:
    """Await ``work``, sending a heartbeat while it runs, so the peer waits."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_INTERVAL)
            if done:
                return task.result()
            await _write(writer, _BEAT, b"")
    finally:
        # The peer went away while the work ran: nobody wants its result.
        task.cancel()


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
            read = _read(reader, _MAX_REQUEST_BYTES)
            _, raw = await asyncio.wait_for(read, ANSWER_TIMEOUT)
            await _write(writer, _ACK, b"")
            await self._answer(_loads(raw), writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
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
        if op == "hello":
            await _write(writer, _ROWS, b"[]")
        elif op == "ping":
            await _beating(writer, self._store.ping())
            await _write(writer, _ROWS, b"[]")
        elif op == "query":
            query = self._store.query(request["sql"], request["params"])
            rows = await _beating(writer, query)
            await _write(writer, _ROWS, _dumps(rows))
        elif op == "export":
            await self._export(request, writer)
        else:
            raise ValueError(f"unknown relay operation {op!r}")

    async def _export(self, request: dict[str, Any], writer: Any) -> None:
        stream = self._store.export(request["name"], request["sql"], request["params"])
        try:
            await _beating(writer, stream.start())
            # A chunk may be long in coming (a filter that matches little
            # of a large table): the heartbeat goes on between chunks.
            chunks = stream.chunks()
            while chunk := await _beating(writer, anext(chunks, b"")):
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
                loop.sock_connect(sock, self._address), CONNECT_TIMEOUT
            )
            return await asyncio.open_unix_connection(sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise BackendUnavailable(
                "analytics on chDB are served by the process running ingest, "
                f"and none answers: {exc!r}"
            ) from exc

    async def _send(
        self, request: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a connection, send ``request`` and wait for its acknowledgement."""
        reader, writer = await self._open()
        try:
            await _write(writer, _REQUEST, _dumps(request))
            await _acknowledged(reader)
        except OSError as exc:
            writer.close()
            raise BackendUnavailable(f"analytics relay failed: {exc!r}") from exc
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _call(self, request: dict[str, Any]) -> Any:
        reader, writer = await self._send(request)
        try:
            tag, payload = await asyncio.wait_for(_answer(reader), QUERY_TIMEOUT)
        except TimeoutError:
            raise BackendUnavailable(
                f"analytics query still running after {QUERY_TIMEOUT} s, given up"
            ) from None
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
        """Check that the holder of chDB answers, and chDB in it."""
        await self._call({"op": "ping"})

    async def ping_holder(self) -> None:
        """Check that the holder of chDB answers, without asking chDB.

        Cheap and quick even while the holder runs a long query or export,
        which a ``SELECT 1`` would wait for: what readiness asks.
        """
        await self._call({"op": "hello"})

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
    """The bytes of one relayed export, with the interface of a ByteStream.

    A holder that stops sending, not even a heartbeat, for
    :data:`IDLE_TIMEOUT` ends the stream with ``BackendUnavailable``: before
    the first chunk that is a 503, after it the response is cut short.
    """

    def __init__(self, store: RelayedStore, request: dict[str, Any]) -> None:
        self._store = store
        self._request = request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._first: bytes | None = None

    async def start(self) -> None:
        """Send the request and wait for the first chunk or the error."""
        self._reader, self._writer = await self._store._send(self._request)
        try:
            self._first = await self._next()
        except BaseException:
            await self.aclose()
            raise

    async def _next(self) -> bytes:
        assert self._reader is not None, "start() comes first"
        tag, payload = await _answer(self._reader)
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
