"""Keep one worker's copy of the API keys it has seen, by their digest.

An authenticated request would otherwise read its key from the link store
each time. The copy is trusted only while the worker is subscribed to the
key change channel (see ``boltlink.apikeys.announce_key_change``): every
revocation is announced there, and the listener drops the whole copy when
one arrives, when the subscription is lost and when it is made again. Each
entry also lives at most ``ttl`` seconds, a backstop for an announcement
that could not be sent.
"""

from __future__ import annotations

import time

from boltlink.models import ApiKey

__all__ = ["KeyCache"]

# Only keys the store knows are kept, so the size follows the key table;
# the bound is for a table of many thousands of keys.
_MAX_KEYS = 10_000


class KeyCache:
    """Map key digests to stored keys while the change channel is heard."""

    def __init__(self, ttl: float, *, enabled: bool = True) -> None:
        self._ttl = ttl
        self._enabled = enabled and ttl > 0
        self._entries: dict[str, tuple[float, ApiKey]] = {}
        # Bumped by every drop: a store read that began before one must not
        # put what it read into the copy.
        self.generation = 0
        self._listening = False

    @property
    def trusted(self) -> bool:
        """Tell whether keys are cached now (enabled, and changes are heard)."""
        return self._enabled and self._listening

    def get(self, key_hash: str) -> ApiKey | None:
        """Return the cached key of this digest, or None to ask the store."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key_hash]
            return None
        return entry[1]

    def put(self, key_hash: str, key: ApiKey, generation: int) -> None:
        """Keep ``key``, read from the store while at ``generation``."""
        if not self.trusted or generation != self.generation:
            return
        if len(self._entries) >= _MAX_KEYS:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self._ttl, key)

    def forget(self) -> None:
        """Drop every key: one was revoked, or an announcement may be lost."""
        self.generation += 1
        self._entries.clear()

    def listening(self, heard: bool) -> None:
        """Say whether key changes are heard now; either way start empty."""
        self._listening = heard
        self.forget()
