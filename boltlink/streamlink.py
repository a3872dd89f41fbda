"""A pipelined connection of the recorder's own for its stream writes.

A redirect waits for its click's ``XADD`` reply, so the stream write sits
on the redirect path: through redis-py each batch built a pipeline, ran it
under a retry wrapper and a timeout task, and woke the recorder's task
twice. :class:`StreamLink` writes the commands straight to a socket and
reads the replies in the protocol's callback, and it does not wait for one
batch's reply before sending the next: Redis answers the commands of one
connection in order, so the replies are matched to the batches first in,
first out.

redis-py still opens the connection (TLS, unix sockets, ``AUTH``,
``SELECT`` and ``HELLO`` as the client's URL says), then the link takes
the socket over. A link that fails (a reply overdue, the socket closed,
bytes that do not parse) fails every batch it holds at once and is opened
again by the next :meth:`StreamLink.connect`: a failed batch may have been
applied, and the recorder keeps it to send again unchanged.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis import exceptions as redis_errors

__all__ = ["StreamLink", "pack_command"]


def pack_command(*parts: bytes) -> bytes:
    """Return one command in the Redis protocol (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Batch:
    """Commands sent together, answered when the last of their replies is in."""

    __slots__ = ("deadline", "error", "future", "left")

    def __init__(self, future: asyncio.Future[None], replies: int, deadline: float):
        self.future = future
        self.left = replies
        self.deadline = deadline
        self.error: Exception | None = None


class _Replies(asyncio.Protocol):
    """The protocol of one connection; a replaced one's late events are ignored."""

    def __init__(self, link: StreamLink) -> None:
        self._link = link

    def data_received(self, data: bytes) -> None:
        if self._link._protocol is self:
            self._link._received(data)

    def eof_received(self) -> bool:
        if self._link._protocol is self:
            self._link._fail(
                redis_errors.ConnectionError("Redis closed the connection")
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link._protocol is self:
            reason = f": {exc}" if exc else ""
            self._link._fail(redis_errors.ConnectionError(f"connection lost{reason}"))


class StreamLink:
    """Send pipelined commands on a connection of its own; match the replies.

    ``timeout`` bounds the wait for a reply: the oldest batch unanswered
    after it fails the link, as redis-py's socket timeout would.
    """

    def __init__(self, redis: Any, *, timeout: float = 2.0) -> None:
        self._pool = redis.connection_pool
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._protocol: _Replies | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: Any = None
        self._batches: collections.deque[_Batch] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def ready(self) -> bool:
        """Return whether :meth:`send` may be called now."""
        return self._transport is not None

    @property
    def in_flight(self) -> int:
        """Return how many batches wait for their replies."""
        return len(self._batches)

    async def connect(self) -> None:
        """Open the connection if it is not open; raise a Redis error if not."""
        if self._transport is not None:
            return
        connection = self._pool.make_connection()
        await connection.connect()
        writer = getattr(connection, "_writer", None)
        if writer is None:
            raise RuntimeError("redis-py connection without a stream writer")
        # The socket is the link's from here: redis-py's connection would
        # close it when collected, and so would the stream writer, which is
        # kept for that reason until the link fails or closes.
        connection._writer = connection._reader = None
        self._writer = writer
        transport = writer.transport
        self._reader = hiredis.Reader(
            protocolError=redis_errors.InvalidResponse,
            replyError=redis_errors.ResponseError,
        )
        self._protocol = _Replies(self)
        transport.set_protocol(self._protocol)
        self._transport = transport

    def send(self, payload: bytes, replies: int) -> asyncio.Future[None]:
        """Write ``payload`` (``replies`` commands); the future ends with them.

        The future fails with the first error reply among them, or with a
        ``ConnectionError``/``TimeoutError`` if the link fails first.
        """
        if self._transport is None:
            raise redis_errors.ConnectionError("stream link not connected")
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), replies, loop.time() + self._timeout)
        self._batches.append(batch)
        self._transport.write(payload)
        if self._timer is None:
            self._timer = loop.call_at(batch.deadline, self._check)
        return batch.future

    def close(self) -> None:
        """Close the connection; batches still unanswered fail."""
        self._fail(redis_errors.ConnectionError("stream link closed"))

    def _received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        batches = self._batches
        try:
            while (reply := reader.gets()) is not False:
                if not batches:
                    raise redis_errors.InvalidResponse("reply to no command")
                batch = batches[0]
                if isinstance(reply, Exception) and batch.error is None:
                    batch.error = reply
                batch.left -= 1
                if batch.left == 0:
                    batches.popleft()
                    if batch.future.done():
                        # Its waiter was cancelled (a stopping recorder):
                        # the reply is consumed, the link carries on.
                        continue
                    if batch.error is None:
                        batch.future.set_result(None)
                    else:
                        batch.future.set_exception(batch.error)
        except redis_errors.InvalidResponse as exc:
            self._fail(exc)

    def _check(self) -> None:
        self._timer = None
        if not self._batches:
            return
        loop = asyncio.get_running_loop()
        oldest = self._batches[0].deadline
        if loop.time() >= oldest:
            self._fail(
                redis_errors.TimeoutError(f"no reply from Redis in {self._timeout} s")
            )
        else:
            self._timer = loop.call_at(oldest, self._check)

    def _fail(self, error: Exception) -> None:
        transport, self._transport = self._transport, None
        self._protocol = None
        if transport is not None:
            transport.abort()
        self._writer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batches, self._batches = self._batches, collections.deque()
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(error)
