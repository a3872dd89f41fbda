"""Test the recorder's pipelined stream connection against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from boltlink.streamlink import StreamLink, pack_command

pytestmark = pytest.mark.redis


def _xadd(key: str, value: str) -> bytes:
    return pack_command(b"XADD", key.encode(), b"*", b"v", value.encode())


async def test_batches_sent_before_any_reply_are_answered_in_order(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}s"
    link = StreamLink(redis_client)
    await link.connect()
    try:
        # Three batches on the wire at once, the second of two commands.
        first = link.send(_xadd(stream, "a"), 1)
        second = link.send(_xadd(stream, "b") + _xadd(stream, "c"), 2)
        third = link.send(_xadd(stream, "d"), 1)
        assert link.in_flight == 3
        await asyncio.gather(first, second, third)
        assert link.in_flight == 0
    finally:
        link.close()
    values = [f[b"v"] for _, f in await redis_client.xrange(stream)]
    assert values == [b"a", b"b", b"c", b"d"]


async def test_an_error_reply_fails_its_batch_only(
    redis_client: Any, redis_prefix: str
) -> None:
    stream, plain = f"{redis_prefix}s", f"{redis_prefix}plain"
    await redis_client.set(plain, "not a stream")
    link = StreamLink(redis_client)
    await link.connect()
    try:
        good = link.send(_xadd(stream, "a"), 1)
        bad = link.send(_xadd(stream, "b") + _xadd(plain, "x"), 2)
        after = link.send(_xadd(stream, "c"), 1)
        await good
        with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
            await bad
        await after
        assert link.ready
    finally:
        link.close()
    values = [f[b"v"] for _, f in await redis_client.xrange(stream)]
    # The batch's other command was applied: the recorder sends such a batch
    # again under the same write ids, which the sinks count once.
    assert values == [b"a", b"b", b"c"]


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """Listen on loopback; after the handshake answer nothing, keep what came."""
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def accept(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writers.append(writer)
        while data := await reader.read(65536):
            if b"XADD" in data:
                received.append(data)
                continue
            # The connection's handshake (CLIENT SETINFO): +OK to each command.
            lines = data.split(b"\r\n")
            commands = sum(
                1
                for before, line in zip([b"", *lines], lines, strict=False)
                if line.startswith(b"*") and not before.startswith(b"$")
            )
            writer.write(b"+OK\r\n" * commands)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0", received
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_reply_overdue_fails_every_batch_and_the_link_opens_again(
    redis_client: Any, redis_prefix: str
) -> None:
    async with _silent_server() as (url, received):
        client = aioredis.Redis.from_url(url)
        link = StreamLink(client, timeout=0.3)
        await link.connect()
        sent = [link.send(_xadd("k", "a"), 1), link.send(_xadd("k", "b"), 1)]
        results = await asyncio.gather(*sent, return_exceptions=True)
        assert [type(r) for r in results] == [redis_errors.TimeoutError] * 2
        assert not link.ready
        assert b"".join(received) == _xadd("k", "a") + _xadd("k", "b")
        await client.aclose()

    link = StreamLink(redis_client)
    await link.connect()
    try:
        await link.send(_xadd(f"{redis_prefix}s", "again"), 1)
    finally:
        link.close()
    assert await redis_client.xlen(f"{redis_prefix}s") == 1


async def test_a_closed_connection_fails_what_it_holds(
    redis_client: Any, redis_prefix: str
) -> None:
    link = StreamLink(redis_client)
    await link.connect()
    # Redis drops the connection while a blocking command holds it: the
    # batch after it never gets its reply.
    blocked = link.send(
        pack_command(b"BLPOP", f"{redis_prefix}never".encode(), b"5"), 1
    )
    queued = link.send(_xadd(f"{redis_prefix}s", "late"), 1)
    await asyncio.sleep(0.1)
    killed = 0
    for client in await redis_client.client_list():
        if client["cmd"] == "blpop":
            await redis_client.client_kill_filter(_id=client["id"])
            killed += 1
    assert killed == 1
    for future in (blocked, queued):
        with pytest.raises(redis_errors.ConnectionError):
            await future
    assert not link.ready
    assert await redis_client.xlen(f"{redis_prefix}s") == 0


async def test_a_cancelled_batch_leaves_the_link_and_the_batches_after_it(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}s"
    link = StreamLink(redis_client)
    await link.connect()
    try:
        # The recorder's task cancelled while it waits for a write: the
        # reply still comes, and must not break the connection.
        cancelled = link.send(_xadd(stream, "a"), 1)
        cancelled.cancel()
        await link.send(_xadd(stream, "b"), 1)
        assert (link.ready, link.in_flight) == (True, 0)
    finally:
        link.close()
    values = [f[b"v"] for _, f in await redis_client.xrange(stream)]
    assert values == [b"a", b"b"]
