"""Check both link-store backends against one suite, through ``store``."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from boltlink.errors import (
    BackendUnavailable,
    CodeTaken,
    ConfigError,
    LinkGone,
    LinkNotFound,
)
from boltlink.models import NewLink
from boltlink.store import create_store, migrate
from boltlink.store.postgres import PostgresStore

Store = Any

BATCH = [("1-0", {1: 2}), ("1-1", {1: 1, 2: 5})]


def new_link(code: str, **fields: Any) -> NewLink:
    """Build a ``NewLink`` to example.com with this code."""
    return NewLink(code=code, url=f"https://example.com/{code}", **fields)


async def make_links(store: Store, count: int) -> list[int]:
    """Create links c0, c1, ... one after the other; return their ids."""
    return [(await store.create_link(new_link(f"c{i}"))).id for i in range(count)]


# -- migrations -----------------------------------------------------------------


def test_migrate_fresh_database_applies_initial(store_dsn: tuple[str, str]) -> None:
    dsn, schema = store_dsn

    assert migrate(dsn, schema=schema) == ["0001_initial"]
    assert migrate(dsn, schema=schema) == []


def test_migrate_concurrent_runs_apply_once(store_dsn: tuple[str, str]) -> None:
    dsn, schema = store_dsn

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: migrate(dsn, schema=schema), range(4)))

    assert sorted(results) == [[], [], [], ["0001_initial"]]


def test_create_store_unknown_scheme_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported database url scheme 'mysql'"):
        create_store("mysql://root:secret@localhost/links")


def test_create_store_relative_sqlite_path_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="must name an absolute path"):
        create_store("sqlite://links.sqlite3")


# -- connections ----------------------------------------------------------------


async def test_ping_open_store_succeeds(store: Store) -> None:
    assert await store.ping() is None


async def test_closed_store_fails_at_once_instead_of_waiting(store: Store) -> None:
    await store.close()

    for call in (store.ping(), store.get_link("abc"), store.list_keys()):
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(call, 2.0)


async def test_open_unreachable_postgres_raises_backend_unavailable() -> None:
    dsn = "postgresql://boltlink:hunter2@127.0.0.1:1/links"
    store = PostgresStore(dsn, timeout=0.5)

    with pytest.raises(BackendUnavailable) as caught:
        await store.open()

    assert str(caught.value).startswith("postgres '127.0.0.1:1/links' unavailable")
    assert "hunter2" not in str(caught.value)


# -- links ----------------------------------------------------------------------


async def test_create_link_returns_stored_link(store: Store) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    before = datetime.now(UTC)

    link = await store.create_link(
        new_link("abc", title="A", tags=("b", "a", "b"), expires_at=expires)
    )

    assert (link.id, link.code, link.domain) == (1, "abc", "")
    assert (link.url, link.title) == ("https://example.com/abc", "A")
    assert (link.tags, link.redirect_status, link.clicks) == (("a", "b"), 302, 0)
    assert (link.expires_at, link.deleted_at, link.created_by) == (expires, None, None)
    assert link.created_at == link.updated_at
    assert link.created_at >= before - timedelta(seconds=1)
    assert link.created_at.tzinfo == UTC
    assert await store.get_link("abc") == link


async def test_create_link_other_zone_returns_utc(store: Store) -> None:
    expires = datetime(2030, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))

    link = await store.create_link(new_link("tz", expires_at=expires))

    assert link.expires_at == datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
    assert link.expires_at is not None and link.expires_at.tzinfo == UTC


async def test_create_link_naive_expiry_raises_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        await store.create_link(new_link("naive", expires_at=datetime(2030, 1, 1)))

    assert await store.get_link("naive") is None


async def test_create_link_taken_code_raises_code_taken(store: Store) -> None:
    await store.create_link(new_link("dup"))

    with pytest.raises(CodeTaken, match="code 'dup' already taken") as caught:
        await store.create_link(new_link("dup", tags=("x",)))

    assert caught.value.field == "code"
    assert [link.code for link in await store.list_links(limit=10)] == ["dup"]


async def test_create_link_same_code_other_case_or_domain_succeeds(
    store: Store,
) -> None:
    first = await store.create_link(new_link("Abc"))
    second = await store.create_link(new_link("abc"))
    third = await store.create_link(new_link("abc", domain="go.example"))

    assert [first.id, second.id, third.id] == [1, 2, 3]
    assert (await store.get_link("abc", "go.example")) == third
    assert (await store.get_link("ABC")) is None


async def test_create_link_concurrent_same_code_one_wins(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_link(new_link("race")) for _ in range(20)),
        return_exceptions=True,
    )

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, CodeTaken) for r in results) == 19


async def test_create_link_two_stores_same_code_one_wins(
    store: Store, store_dsn: tuple[str, str]
) -> None:
    dsn, schema = store_dsn
    other = create_store(dsn, schema=schema, pool_size=2)
    await other.open()
    try:
        results = await asyncio.gather(
            *(s.create_link(new_link("race")) for s in [store, other] * 10),
            return_exceptions=True,
        )
    finally:
        await other.close()

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, CodeTaken) for r in results) == 19


async def test_create_links_answers_each_in_order(store: Store) -> None:
    await store.create_link(new_link("taken"))

    links = await store.create_links(
        [new_link("zz", tags=("b", "a")), new_link("taken"), new_link("aa")]
    )

    assert [link.code if link else None for link in links] == ["zz", None, "aa"]
    assert [link.tags if link else None for link in links] == [("a", "b"), None, ()]
    assert [await store.get_link(code) for code in ("zz", "aa")] == [
        links[0],
        links[2],
    ]
    assert (await store.get_link("taken")).url == "https://example.com/taken"


async def test_create_links_repeated_code_raises_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="must not repeat a code"):
        await store.create_links([new_link("twice"), new_link("twice")])

    assert await store.get_link("twice") is None


async def test_create_links_empty_batch_returns_nothing(store: Store) -> None:
    assert await store.create_links([]) == []


async def test_create_links_failed_row_stores_nothing(store: Store) -> None:
    # A creator that no key has breaks the foreign key: the whole batch fails.
    import sqlite3

    import psycopg

    broken = (sqlite3.IntegrityError, psycopg.errors.ForeignKeyViolation)
    with pytest.raises(broken):
        await store.create_links(
            [new_link("ok", tags=("t",)), new_link("bad", created_by=999)]
        )

    assert await store.list_links(limit=10) == []
    assert await store.list_links(limit=10, tag="t") == []


async def test_create_links_concurrent_batches_sharing_codes_each_code_once(
    store: Store, store_dsn: tuple[str, str]
) -> None:
    dsn, schema = store_dsn
    other = create_store(dsn, schema=schema, pool_size=2)
    await other.open()
    codes = [f"s{i}" for i in range(30)]
    try:
        results = await asyncio.gather(
            *(
                s.create_links([new_link(c) for c in order])
                for s, order in [(store, codes), (other, codes[::-1])] * 3
            )
        )
    finally:
        await other.close()

    won = [link.code for batch in results for link in batch if link is not None]
    assert sorted(won) == sorted(codes)


async def test_get_link_unknown_code_returns_none(store: Store) -> None:
    assert await store.get_link("nope") is None


async def test_get_link_deleted_returns_tombstone(store: Store) -> None:
    await store.create_link(new_link("gone"))
    deleted = await store.delete_link("gone")

    link = await store.get_link("gone")

    assert link == deleted
    assert link is not None and link.deleted_at is not None


async def test_list_links_default_returns_newest_first(store: Store) -> None:
    ids = await make_links(store, 3)

    links = await store.list_links(limit=10)

    assert [link.id for link in links] == ids[::-1]


async def test_list_links_before_id_returns_next_page(store: Store) -> None:
    ids = await make_links(store, 5)

    first = await store.list_links(limit=2)
    second = await store.list_links(limit=2, before_id=first[-1].id)
    last = await store.list_links(limit=2, before_id=second[-1].id)

    assert [link.id for link in first + second + last] == ids[::-1]


async def test_list_links_tag_returns_tagged_only(store: Store) -> None:
    await store.create_link(new_link("a", tags=("red",)))
    await store.create_link(new_link("b", tags=("blue",)))
    await store.create_link(new_link("c", tags=("red", "blue")))

    links = await store.list_links(limit=10, tag="red")

    assert [(link.code, link.tags) for link in links] == [
        ("c", ("blue", "red")),
        ("a", ("red",)),
    ]


async def test_list_links_deleted_are_skipped(store: Store) -> None:
    await make_links(store, 3)
    await store.delete_link("c1")

    links = await store.list_links(limit=10)

    assert [link.code for link in links] == ["c2", "c0"]


async def test_update_link_fields_are_replaced(store: Store) -> None:
    created = await store.create_link(new_link("up", title="Old", tags=("a", "b")))
    expires = datetime(2031, 5, 6, tzinfo=UTC)

    updated = await store.update_link(
        "up",
        {
            "url": "https://example.org/",
            "title": None,
            "tags": ["c", "b"],
            "expires_at": expires,
            "redirect_status": 301,
        },
    )

    assert (updated.id, updated.url, updated.title) == (
        created.id,
        "https://example.org/",
        None,
    )
    assert (updated.tags, updated.expires_at, updated.redirect_status) == (
        ("b", "c"),
        expires,
        301,
    )
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert await store.get_link("up") == updated


async def test_update_link_without_tags_keeps_tags(store: Store) -> None:
    await store.create_link(new_link("keep", tags=("a",)))

    updated = await store.update_link("keep", {"title": "New"})

    assert (updated.title, updated.tags) == ("New", ("a",))


async def test_update_link_unknown_code_raises_not_found(store: Store) -> None:
    with pytest.raises(LinkNotFound, match="code 'nope' not found"):
        await store.update_link("nope", {"title": "x"})


async def test_update_link_deleted_raises_gone(store: Store) -> None:
    await store.create_link(new_link("old"))
    await store.delete_link("old")

    with pytest.raises(LinkGone, match="link 'old' was deleted"):
        await store.update_link("old", {"title": "x"})


async def test_update_link_unknown_field_raises_value_error(store: Store) -> None:
    await store.create_link(new_link("f"))

    with pytest.raises(ValueError, match=r"cannot update fields \['clicks'\]"):
        await store.update_link("f", {"clicks": 5})


async def test_delete_link_live_sets_deleted_at(store: Store) -> None:
    created = await store.create_link(new_link("del"))

    deleted = await store.delete_link("del")

    assert deleted.deleted_at is not None
    assert deleted.deleted_at >= created.created_at
    assert deleted.deleted_at.tzinfo == UTC


async def test_delete_link_twice_raises_gone(store: Store) -> None:
    await store.create_link(new_link("del"))
    await store.delete_link("del")

    with pytest.raises(LinkGone, match="link 'del' was deleted"):
        await store.delete_link("del")


async def test_delete_link_unknown_code_raises_not_found(store: Store) -> None:
    with pytest.raises(LinkNotFound, match="code 'nope' not found"):
        await store.delete_link("nope")


# -- clicks ---------------------------------------------------------------------


async def clicks_of(store: Store, *codes: str) -> list[int]:
    """Return the click counters of these links."""
    return [(await store.get_link(code)).clicks for code in codes]


async def test_apply_clicks_new_entries_add_counts(store: Store) -> None:
    await make_links(store, 2)

    assert await store.apply_clicks("clicks", BATCH) == 2
    assert await clicks_of(store, "c0", "c1") == [3, 5]


async def test_apply_clicks_same_batch_twice_counts_once(store: Store) -> None:
    await make_links(store, 2)

    assert await store.apply_clicks("clicks", BATCH) == 2
    assert await store.apply_clicks("clicks", BATCH) == 0
    assert await clicks_of(store, "c0", "c1") == [3, 5]


async def test_apply_clicks_overlapping_batches_count_once(store: Store) -> None:
    await make_links(store, 2)

    await store.apply_clicks("clicks", BATCH)
    new = await store.apply_clicks("clicks", [BATCH[1], ("1-2", {2: 10})])

    assert new == 1
    assert await clicks_of(store, "c0", "c1") == [3, 15]


async def test_apply_clicks_repeated_entry_in_batch_counts_once(store: Store) -> None:
    await make_links(store, 1)

    assert await store.apply_clicks("clicks", [("1-0", {1: 4})] * 3) == 1
    assert await clicks_of(store, "c0") == [4]


async def test_apply_clicks_concurrent_same_batch_counts_once(store: Store) -> None:
    await make_links(store, 2)

    results = await asyncio.gather(
        *(store.apply_clicks("clicks", BATCH) for _ in range(4))
    )

    assert sorted(results) == [0, 0, 0, 2]
    assert await clicks_of(store, "c0", "c1") == [3, 5]


async def test_apply_clicks_other_stream_counts_again(store: Store) -> None:
    await make_links(store, 2)

    await store.apply_clicks("clicks", BATCH)

    assert await store.apply_clicks("clicks-replay", BATCH) == 2
    assert await clicks_of(store, "c0", "c1") == [6, 10]


async def test_apply_clicks_unknown_link_is_ignored(store: Store) -> None:
    await make_links(store, 1)

    assert await store.apply_clicks("clicks", [("9-0", {1: 1, 999: 7})]) == 1
    assert await clicks_of(store, "c0") == [1]


async def test_apply_clicks_empty_batch_returns_zero(store: Store) -> None:
    assert await store.apply_clicks("clicks", []) == 0


async def test_prune_applied_old_entries_are_forgotten(store: Store) -> None:
    await make_links(store, 2)
    await store.apply_clicks("clicks", BATCH)
    now = datetime.now(UTC)

    assert await store.prune_applied(now - timedelta(hours=1)) == 0
    assert await store.prune_applied(now + timedelta(minutes=1)) == 2
    assert await store.apply_clicks("clicks", BATCH) == 2


# -- API keys -------------------------------------------------------------------


async def create_key(store: Store, name: str = "ci") -> Any:
    """Store a key with a digest derived from its name."""
    return await store.create_key(
        name=name,
        scopes=["links:read", "links:write"],
        key_hash=f"{name:0>64}",
        prefix=f"bl_{name}",
    )


async def test_create_key_returns_stored_key(store: Store) -> None:
    key = await create_key(store)

    assert (key.id, key.name, key.prefix) == (1, "ci", "bl_ci")
    assert key.scopes == ("links:read", "links:write")
    assert (key.revoked_at, key.last_used_at) == (None, None)
    assert key.created_at.tzinfo == UTC
    assert await store.get_key(f"{'ci':0>64}") == key


async def test_get_key_unknown_digest_returns_none(store: Store) -> None:
    assert await store.get_key("0" * 64) is None


async def test_list_keys_returns_oldest_first(store: Store) -> None:
    await create_key(store, "b")
    await create_key(store, "a")

    assert [key.name for key in await store.list_keys()] == ["b", "a"]


async def test_revoke_key_twice_keeps_first_time(store: Store) -> None:
    key = await create_key(store)

    first = await store.revoke_key(key.id)
    second = await store.revoke_key(key.id)

    assert first is not None and first.revoked_at is not None
    assert second == first
    assert not first.allows("links:read")
    assert await store.get_key(f"{'ci':0>64}") == first


async def test_revoke_key_unknown_id_returns_none(store: Store) -> None:
    assert await store.revoke_key(42) is None


async def test_create_link_by_key_records_creator(store: Store) -> None:
    key = await create_key(store)

    link = await store.create_link(new_link("k", created_by=key.id))

    assert link.created_by == key.id
