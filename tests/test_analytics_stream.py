"""Test the byte stream between a ClickHouse reader thread and a response."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from boltlink.analytics.stream import ByteStream
from boltlink.errors import BackendUnavailable


def _counting(produced: list[int], total: int) -> Iterator[bytes]:
    for n in range(total):
        produced.append(n)
        yield b"x" * 10


async def test_stream_yields_every_chunk_in_order() -> None:
    lock = threading.Lock()
    stream = ByteStream(lambda: iter([b"a", b"", b"bc", b"d"]), lock)
    await stream.start()

    assert [chunk async for chunk in stream.chunks()] == [b"a", b"bc", b"d"]
    assert not lock.locked()


async def test_stream_stays_a_few_chunks_ahead_of_a_slow_reader() -> None:
    produced: list[int] = []
    lock = threading.Lock()
    stream = ByteStream(lambda: _counting(produced, 10_000), lock)
    await stream.start()
    chunks = stream.chunks()
    await anext(chunks)
    await anext(chunks)
    await chunks.aclose()

    # Two read, four queued, one blocked on the full queue, and no more.
    assert len(produced) <= 8
    assert not lock.locked()


async def test_stream_holds_the_lock_while_it_runs() -> None:
    lock = threading.Lock()
    stream = ByteStream(lambda: _counting([], 100), lock)
    await stream.start()

    assert lock.locked()
    await stream.aclose()
    assert not lock.locked()


async def test_stream_error_before_first_chunk_raises_at_start() -> None:
    def failing() -> Iterator[bytes]:
        raise RuntimeError("Code: 60. Unknown table clickz")
        yield b""

    lock = threading.Lock()
    stream = ByteStream(failing, lock)

    with pytest.raises(BackendUnavailable, match="clickz"):
        await stream.start()
    assert not lock.locked()


async def test_stream_closes_the_producer_when_left_early() -> None:
    closed = threading.Event()

    def produce() -> Iterator[bytes]:
        try:
            while True:
                yield b"chunk"
        finally:
            closed.set()

    stream = ByteStream(produce, threading.Lock())
    await stream.start()
    await stream.aclose()

    assert closed.is_set()
