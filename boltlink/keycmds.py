"""Carry out the ``boltlink keys`` commands against the link store."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis import exceptions as redis_errors

from boltlink.apikeys import announce_key_change, generate_key, hash_key, key_prefix
from boltlink.backends import connect_redis, open_store
from boltlink.models import ApiKey
from boltlink.settings import Settings
from boltlink.store import migrate

__all__ = ["create_key", "list_keys", "revoke_key"]

logger = logging.getLogger("boltlink.api")


def _prepare(settings: Settings) -> None:
    # The embedded store is created on first use, whichever command comes
    # first; a server's schema is the operator's `boltlink migrate`.
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings.database_dsn, schema=settings.database_schema)


async def create_key(
    settings: Settings, name: str, scopes: Sequence[str]
) -> tuple[ApiKey, str]:
    """Store a new key; return it with the raw key, which is not kept."""
    _prepare(settings)
    raw = generate_key()
    store = await open_store(settings)
    try:
        key = await store.create_key(
            name=name, scopes=scopes, key_hash=hash_key(raw), prefix=key_prefix(raw)
        )
    finally:
        await store.close()
    return key, raw


async def list_keys(settings: Settings) -> list[ApiKey]:
    """Return every key."""
    _prepare(settings)
    store = await open_store(settings)
    try:
        return await store.list_keys()
    finally:
        await store.close()


async def revoke_key(settings: Settings, key_id: int) -> tuple[ApiKey | None, bool]:
    """Revoke a key by id; return it (None if unknown) and if it was already.

    Once the store holds the revocation, the web workers are told to drop
    their cached keys, so the key is refused by each on its next request.
    """
    _prepare(settings)
    store = await open_store(settings)
    try:
        before = {key.id: key for key in await store.list_keys()}.get(key_id)
        key = await store.revoke_key(key_id)
    finally:
        await store.close()
    if key is not None:
        await _announce(settings, key.id)
    return key, before is not None and before.revoked_at is not None


async def _announce(settings: Settings, key_id: int) -> None:
    # Workers cache keys only when Redis is configured (the CLI cannot reach
    # a serve's embedded Valkey); there is nobody to tell otherwise.
    if not settings.redis_url:
        return
    redis = connect_redis(settings)
    try:
        heard, confirmed = await announce_key_change(
            redis, settings.redis_prefix, key_id
        )
    except (redis_errors.RedisError, OSError) as exc:
        logger.warning(
            "revocation of key %d not announced, workers refuse it within %.0f s: %s",
            key_id,
            settings.cache_ttl,
            exc,
        )
        return
    finally:
        await redis.aclose()
    if confirmed < heard:
        logger.warning(
            "%d of %d workers did not confirm the revocation of key %d; "
            "they refuse it within %.0f s",
            heard - confirmed,
            heard,
            key_id,
            settings.cache_ttl,
        )
