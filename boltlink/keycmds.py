"""Carry out the ``boltlink keys`` commands against the link store."""

from __future__ import annotations

from collections.abc import Sequence

from boltlink.apikeys import generate_key, hash_key, key_prefix
from boltlink.backends import open_store
from boltlink.models import ApiKey
from boltlink.settings import Settings
from boltlink.store import migrate

__all__ = ["create_key", "list_keys", "revoke_key"]


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
    """Revoke a key by id; return it (None if unknown) and if it was already."""
    _prepare(settings)
    store = await open_store(settings)
    try:
        before = {key.id: key for key in await store.list_keys()}.get(key_id)
        key = await store.revoke_key(key_id)
    finally:
        await store.close()
    return key, before is not None and before.revoked_at is not None
