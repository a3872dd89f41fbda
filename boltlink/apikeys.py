"""Make API keys and recognise them by their SHA-256 digest.

A key is 32 random bytes (256 bits) in URL-safe base64 behind a ``blk_``
marker, so secret scanners can spot a leaked one. It is shown once; the
store keeps only its digest and its first characters, to tell keys apart.

Web workers keep the keys they have seen in memory (``boltlink.web.keycache``);
whatever revokes a key announces it on ``key_channel`` once the store holds
the revocation, every worker drops its copies when the message arrives and
confirms it, and the announcer waits for those confirmations.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

__all__ = [
    "KEY_MARKER",
    "announce_key_change",
    "generate_key",
    "hash_key",
    "key_ack_list",
    "key_channel",
    "key_prefix",
]

KEY_MARKER = "blk_"


def generate_key() -> str:
    """Return a new random API key."""
    return KEY_MARKER + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    """Return the hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def key_prefix(raw: str) -> str:
    """Return the first characters of a key, safe to show and to log."""
    return raw[: len(KEY_MARKER) + 6]


def key_channel(redis_prefix: str) -> str:
    """Return the pub/sub channel on which key revocations are announced."""
    return f"{redis_prefix}keys:changed"


def key_ack_list(redis_prefix: str, token: str) -> str:
    """Return the list into which workers confirm one announcement."""
    return f"{redis_prefix}keys:ack:{token}"


async def announce_key_change(
    redis: Any, redis_prefix: str, key_id: int, *, wait: float = 2.0
) -> tuple[int, int]:
    """Tell every web worker to drop its cached keys and wait for each.

    Return how many workers heard the announcement and how many confirmed
    within ``wait`` seconds that their caches are empty; once they all did,
    no worker accepts the key again.
    """
    token = secrets.token_hex(8)
    heard: int = await redis.publish(key_channel(redis_prefix), f"{key_id} {token}")
    confirmed = 0
    deadline = time.monotonic() + wait
    acks = key_ack_list(redis_prefix, token)
    while confirmed < heard and (left := deadline - time.monotonic()) > 0:
        # BLPOP's timeout in seconds, under the client's socket timeout.
        if await redis.blpop([acks], timeout=min(left, 1.0)) is not None:
            confirmed += 1
    await redis.delete(acks)
    return heard, confirmed
