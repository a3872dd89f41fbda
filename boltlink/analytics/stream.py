"""Carry bytes from a blocking producer thread to an async consumer.

A ClickHouse result stream is a blocking iterator that must be read to the
end, or closed, by one thread, under the store's lock (a chDB session serves
one call at a time). :class:`ByteStream` runs it in a thread of its own and
hands chunks over through a queue of a few slots, so the producer waits
when the consumer (a slow HTTP client) is behind: memory stays bounded by
the queue, never by the size of the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from boltlink.errors import BackendUnavailable

__all__ = ["ByteStream"]

_DEPTH = 4
_POLL_SECONDS = 0.1
_DONE = b""


class ByteStream:
    """Run ``produce`` in a thread under ``lock``; iterate its chunks async."""

    def __init__(
        self, produce: Callable[[], Iterator[bytes]], lock: threading.Lock
    ) -> None:
        self._produce = produce
        self._lock = lock
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(_DEPTH)
        self._stop = threading.Event()
        self._first: bytes | None = None
        self._thread = threading.Thread(
            target=self._run, name="boltlink-export", daemon=True
        )

    async def start(self) -> None:
        """Start the producer and wait for its first chunk or its error.

        A query that fails fails here, before a response has begun.
        """
        self._thread.start()
        first = await self._next()
        self._first = first

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield every chunk; stop the producer if the consumer goes away."""
        try:
            chunk = self._first if self._first is not None else await self._next()
            while chunk:
                yield chunk
                chunk = await self._next()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the producer and wait until it has let go of the lock."""
        self._stop.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    async def _next(self) -> bytes:
        item = await asyncio.to_thread(self._get)
        if isinstance(item, BaseException):
            await self.aclose()
            raise BackendUnavailable(f"clickhouse export failed: {item}") from item
        return item

    # -- the producer thread ---------------------------------------------------

    def _run(self) -> None:
        with self._lock:
            chunks = self._produce()
            try:
                for chunk in chunks:
                    if chunk and not self._put(chunk):
                        return
                self._put(_DONE)
            except Exception as exc:
                self._put(exc)
            finally:
                # A generator left early closes here, in its own thread,
                # which closes the ClickHouse stream it holds.
                close = getattr(chunks, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _get(self) -> bytes | BaseException:
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
        return _DONE
