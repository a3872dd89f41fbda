"""Test the link store lookups the analytics API scopes keys with."""

from __future__ import annotations

from typing import Any

from boltlink.models import NewLink


async def test_link_ids_created_by_lists_a_keys_links_deleted_included(
    store: Any,
) -> None:
    mine = await store.create_key(name="a", scopes=[], key_hash="a" * 64, prefix="a")
    theirs = await store.create_key(name="b", scopes=[], key_hash="b" * 64, prefix="b")
    one = await store.create_link(
        NewLink("one", "https://e.test/1", created_by=mine.id)
    )
    two = await store.create_link(
        NewLink("two", "https://e.test/2", created_by=mine.id)
    )
    await store.create_link(NewLink("six", "https://e.test/6", created_by=theirs.id))
    await store.delete_link("two")

    assert await store.link_ids_created_by(mine.id) == [one.id, two.id]
    assert await store.link_ids_created_by(theirs.id + 1) == []


async def test_link_codes_maps_existing_ids(store: Any) -> None:
    one = await store.create_link(NewLink("one", "https://e.test/1"))
    two = await store.create_link(NewLink("two", "https://e.test/2"))

    assert await store.link_codes([two.id, one.id, 999_999]) == {
        one.id: "one",
        two.id: "two",
    }
    assert await store.link_codes([]) == {}
