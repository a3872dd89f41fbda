"""Test the worker's API key cache and the revocations that empty it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from boltlink.apikeys import generate_key, hash_key, key_prefix
from boltlink.models import ApiKey
from boltlink.web import keycache
from boltlink.web.keycache import KeyCache

_KEY = ApiKey(1, "k", "blk_abcdef", ("admin",), datetime(2026, 1, 1, tzinfo=UTC))


def _listening_cache(ttl: float = 5.0) -> KeyCache:
    cache = KeyCache(ttl)
    cache.listening(True)
    return cache


def test_key_cache_returns_what_it_was_given() -> None:
    cache = _listening_cache()

    cache.put("d", _KEY, cache.generation)

    assert cache.get("d") == _KEY
    assert cache.get("other") is None


def test_key_cache_keeps_nothing_until_changes_are_heard() -> None:
    cache = KeyCache(5.0)

    cache.put("d", _KEY, cache.generation)

    assert (cache.trusted, cache.get("d")) == (False, None)


def test_key_cache_disabled_keeps_nothing() -> None:
    cache = KeyCache(5.0, enabled=False)
    cache.listening(True)

    cache.put("d", _KEY, cache.generation)

    assert (cache.trusted, cache.get("d")) == (False, None)


def test_key_cache_channel_lost_drops_every_key() -> None:
    cache = _listening_cache()
    cache.put("d", _KEY, cache.generation)

    cache.listening(False)
    cache.put("e", _KEY, cache.generation)

    assert (cache.get("d"), cache.get("e")) == (None, None)


def test_key_cache_read_older_than_a_change_is_not_kept() -> None:
    cache = _listening_cache()
    generation = cache.generation

    cache.forget()
    cache.put("d", _KEY, generation)

    assert cache.get("d") is None


def test_key_cache_entry_expires_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(keycache.time, "monotonic", lambda: now[0])
    cache = _listening_cache(ttl=5.0)
    cache.put("d", _KEY, cache.generation)

    now[0] = 1004.9
    kept = cache.get("d")
    now[0] = 1005.1

    assert (kept, cache.get("d")) == (_KEY, None)


# -- in the app, with real Redis -----------------------------------------------


async def _new_key(app: Any, scopes: list[str]) -> tuple[ApiKey, str]:
    raw = generate_key()
    key = await app.state.runtime.store.create_key(
        name="cached", scopes=scopes, key_hash=hash_key(raw), prefix=key_prefix(raw)
    )
    return key, raw


async def _wait_trusted(app: Any) -> KeyCache:
    cache: KeyCache = app.state.runtime.resolver.keys
    for _ in range(500):
        if cache.trusted:
            return cache
        await asyncio.sleep(0.01)
    raise AssertionError("key change channel never subscribed")


@pytest.mark.redis
async def test_key_used_once_is_served_from_the_cache(client: Any, app: Any) -> None:
    cache = await _wait_trusted(app)
    key, raw = await _new_key(app, ["links:read"])

    response = await client.get(
        "/api/v1/links", headers={"Authorization": f"Bearer {raw}"}
    )

    assert response.status_code == 200
    assert cache.get(hash_key(raw)) == key


@pytest.mark.redis
async def test_unknown_key_is_never_cached(client: Any, app: Any) -> None:
    cache = await _wait_trusted(app)

    response = await client.get(
        "/api/v1/links", headers={"Authorization": "Bearer blk_nope"}
    )

    assert response.status_code == 401
    assert cache.get(hash_key("blk_nope")) is None


@pytest.mark.redis
async def test_cached_key_revoked_by_the_cli_is_refused_on_next_request(
    client: Any, app: Any, settings: Any
) -> None:
    from boltlink.keycmds import revoke_key

    cache = await _wait_trusted(app)
    for _ in range(5):
        key, raw = await _new_key(app, ["links:read"])
        headers = {"Authorization": f"Bearer {raw}"}
        assert (await client.get("/api/v1/links", headers=headers)).status_code == 200
        assert cache.get(hash_key(raw)) == key

        revoked, already = await revoke_key(settings, key.id)

        assert (revoked is not None, already) == (True, False)
        response = await client.get("/api/v1/links", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


async def test_revocation_without_redis_is_stored_and_warned(
    store: Any, store_dsn: tuple[str, str], tmp_path: Any, caplog: Any
) -> None:
    import socket

    from boltlink.keycmds import revoke_key
    from boltlink.settings import Settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dsn, schema = store_dsn
    settings = Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        database_url=dsn,
        database_schema=schema,
        redis_url=f"redis://127.0.0.1:{closed_port}/0",
    )
    raw = generate_key()
    key = await store.create_key(
        name="k", scopes=["admin"], key_hash=hash_key(raw), prefix=key_prefix(raw)
    )

    revoked, already = await revoke_key(settings, key.id)

    assert revoked is not None and revoked.revoked_at is not None
    assert already is False
    assert (await store.get_key(hash_key(raw))).revoked_at == revoked.revoked_at
    [warning] = [r for r in caplog.records if r.name == "boltlink.api"]
    assert warning.getMessage().startswith(
        f"revocation of key {key.id} not announced, workers refuse it within 5 s:"
    )
