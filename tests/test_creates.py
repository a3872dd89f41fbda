"""Test the group commit of creates on both link stores, with real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from boltlink.errors import CodeTaken
from boltlink.web import creates
from boltlink.web.creates import LinkCreator
from boltlink.web.resolver import LinkResolver

pytestmark = pytest.mark.redis


class _CountingStore:
    """Wrap a store and record the size of every ``create_links`` batch."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.batches: list[list[str]] = []

    async def create_links(self, news: Any) -> Any:
        self.batches.append([new.code for new in news])
        return await self.store.create_links(news)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
async def counted(store: Any) -> AsyncIterator[_CountingStore]:
    yield _CountingStore(store)


@pytest.fixture
def creator(counted: _CountingStore, redis_client: Any, redis_prefix: str) -> Any:
    resolver = LinkResolver(
        counted, redis_client, prefix=redis_prefix, size=100, ttl=5, negative_ttl=5
    )
    return LinkCreator(counted, resolver)


def _fields(url: str, code: str | None = None, **more: Any) -> dict[str, Any]:
    return {"url": url, "code": code, **more}


async def test_creates_at_once_share_one_batch(
    creator: LinkCreator, counted: _CountingStore
) -> None:
    links = await asyncio.gather(
        *(
            creator.create(_fields(f"https://e.com/{n}", f"c{n}"), None)
            for n in range(10)
        )
    )

    assert [link.code for link in links] == [f"c{n}" for n in range(10)]
    assert [len(batch) for batch in counted.batches] == [10]


async def test_lone_create_is_written_at_once(
    creator: LinkCreator, counted: _CountingStore
) -> None:
    link = await creator.create(
        _fields("https://e.com/", "solo", tags=("b", "a")), None
    )

    assert (link.code, link.tags) == ("solo", ("a", "b"))
    assert counted.batches == [["solo"]]


async def test_same_code_in_one_batch_first_wins(creator: LinkCreator) -> None:
    results = await asyncio.gather(
        *(
            creator.create(_fields(f"https://e.com/{n}", "race"), None)
            for n in range(20)
        ),
        return_exceptions=True,
    )

    won = [r for r in results if not isinstance(r, BaseException)]
    assert [link.url for link in won] == ["https://e.com/0"]
    assert sum(isinstance(r, CodeTaken) for r in results) == 19


async def test_colliding_random_code_is_drawn_again(
    creator: LinkCreator, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await creator.create(_fields("https://e.com/first", "AAAAAAA"), None)
    drawn = iter(["AAAAAAA", "AAAAAAA", "BBBBBBB"])
    monkeypatch.setattr(creates, "random_code", lambda: next(drawn))

    link = await creator.create(_fields("https://e.com/second"), None)

    assert (link.code, link.url) == ("BBBBBBB", "https://e.com/second")


async def test_random_code_always_taken_is_code_taken(
    creator: LinkCreator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await creator.create(_fields("https://e.com/first", "AAAAAAA"), None)
    monkeypatch.setattr(creates, "random_code", lambda: "AAAAAAA")

    with pytest.raises(CodeTaken, match="code 'AAAAAAA' already taken"):
        await creator.create(_fields("https://e.com/second"), None)


async def test_bad_row_fails_only_its_own_request(
    creator: LinkCreator, store: Any
) -> None:
    results = await asyncio.gather(
        creator.create(_fields("https://e.com/0", "first"), None),
        creator.create(_fields("https://e.com/1", "good"), None),
        # No key has id 999: the foreign key refuses this row alone.
        creator.create(_fields("https://e.com/2", "bad"), 999),
        creator.create(_fields("https://e.com/3", "fine"), None),
        return_exceptions=True,
    )

    assert [getattr(r, "code", None) for r in results] == [
        "first",
        "good",
        None,
        "fine",
    ]
    assert isinstance(results[2], Exception)
    assert await store.get_link("bad") is None


async def test_created_links_are_cached_in_redis_for_redirects(
    creator: LinkCreator, redis_client: Any, redis_prefix: str
) -> None:
    links = await asyncio.gather(
        *(
            creator.create(_fields(f"https://e.com/{n}", f"r{n}"), None)
            for n in range(3)
        )
    )

    cached = await redis_client.mget([f"{redis_prefix}link:r{n}" for n in range(3)])
    assert [raw is not None for raw in cached] == [True] * 3
    assert [link.code for link in links] == ["r0", "r1", "r2"]
