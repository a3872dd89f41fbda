"""Make API keys and recognise them by their SHA-256 digest.

A key is 32 random bytes (256 bits) in URL-safe base64 behind a ``blk_``
marker, so secret scanners can spot a leaked one. It is shown once; the
store keeps only its digest and its first characters, to tell keys apart.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["KEY_MARKER", "generate_key", "hash_key", "key_prefix"]

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
