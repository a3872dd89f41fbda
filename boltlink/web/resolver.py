"""Resolve a short code to its redirect target through three cache layers.

``resolve_link`` asks, in order, the in-process cache, Redis and the link
store, and fills the layers it passed on the way back. A code that no link
has is cached too (for ``negative_cache_ttl``), so a flood of unknown codes
reaches the store once per code.

Changes made through the API are written to Redis (``publish_link``) and
announced on a pub/sub channel; every worker process drops its local copy
when the announcement arrives. Readers fill Redis only with ``SET NX``, so
a reader holding an old row can never overwrite what the writer set.

The same subscription carries API key revocations to the worker's key
cache (``boltlink.web.keycache``), which is trusted only while subscribed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis import exceptions as redis_errors

from boltlink import tracing
from boltlink.apikeys import key_ack_list, key_channel
from boltlink.metrics import CACHE_LOOKUPS, Tally
from boltlink.models import Link
from boltlink.store import LinkStore
from boltlink.web.keycache import KeyCache

__all__ = ["LinkResolver", "Target"]

logger = logging.getLogger("boltlink.redirect")

# A local hit is the common redirect: count it in a plain integer (see
# boltlink.metrics); the other layers cost a round trip anyway.
_LOCAL_HITS = Tally(CACHE_LOOKUPS.labels("local"))
_REDIS_HITS = CACHE_LOOKUPS.labels("redis")
_STORE_LOOKUPS = CACHE_LOOKUPS.labels("store")
_REDIS_FAULTS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
_MISSING = b"-"
# A live link's Redis copy is refreshed by every change, so it may live long.
_REDIS_TTL_SECONDS = 24 * 3600
_REDIS_PAUSE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """What a redirect needs to know about a link, and nothing more."""

    link_id: int
    url: str
    status: int
    expires_at: float | None
    gone: bool

    @classmethod
    def of(cls, link: Link) -> Target:
        """Build the target of a stored link."""
        expires = link.expires_at.timestamp() if link.expires_at else None
        return cls(
            link.id,
            link.url,
            link.redirect_status,
            expires,
            link.deleted_at is not None,
        )

    def dumps(self) -> bytes:
        """Encode for the Redis cache."""
        return orjson.dumps(
            [self.link_id, self.url, self.status, self.expires_at, self.gone]
        )

    @classmethod
    def loads(cls, raw: bytes) -> Target:
        """Decode from the Redis cache."""
        link_id, url, status, expires_at, gone = orjson.loads(raw)
        return cls(link_id, url, status, expires_at, gone)

    def is_live(self, now: float) -> bool:
        """Tell whether the link may redirect at ``now`` (epoch seconds)."""
        return not self.gone and (self.expires_at is None or now < self.expires_at)


class LinkResolver:
    """Find redirect targets; keep the three layers coherent on change."""

    def __init__(
        self,
        store: LinkStore,
        redis: Any,
        *,
        prefix: str,
        size: int,
        ttl: float,
        negative_ttl: float,
        pubsub_redis: Any = None,
        keys: KeyCache | None = None,
    ) -> None:
        self._store = store
        self._redis = redis
        # Pub/sub reads block for as long as nothing changes, so they need a
        # client without the short socket timeout of the redirect path.
        self._pubsub_redis = pubsub_redis if pubsub_redis is not None else redis
        self._prefix = prefix
        self._channel = f"{prefix}links:changed"
        self._key_channel = key_channel(prefix)
        #: The worker's API key cache, kept coherent by the same listener.
        self.keys = keys if keys is not None else KeyCache(0.0, enabled=False)
        self._size = size
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._local: collections.OrderedDict[str, tuple[float, Target | None]] = (
            collections.OrderedDict()
        )
        # Bumped on every invalidation: a lookup that started before one
        # must not put what it read into the local cache.
        self._generation = 0
        self._last_warning = 0.0
        # After a Redis fault, lookups skip Redis for a moment instead of
        # each paying for a failed connection.
        self._redis_down_until = 0.0
        self._channel_lost = False

    def _key(self, code: str) -> str:
        return f"{self._prefix}link:{code}"

    async def resolve_link(self, code: str) -> Target | None:
        """Return the target of ``code``, or None when no link has it."""
        hit = self._from_local_cache(code)
        if hit is not None:
            return hit[1]
        generation = self._generation
        target, found = await self._from_redis(code)
        if not found:
            target = await self._from_store(code)
        if generation == self._generation:
            self._remember(code, target)
        return target

    def cached(self, code: str) -> tuple[float, Target | None] | None:
        """Return this worker's live copy of ``code``, without any I/O.

        The copy is ``(expiry, target)``, the target None for a code known
        to have no link; None means the local cache holds no live copy.
        """
        return self._from_local_cache(code)

    def _from_local_cache(self, code: str) -> tuple[float, Target | None] | None:
        entry = self._local.get(code)
        if entry is None or entry[0] < time.monotonic():
            return None
        self._local.move_to_end(code)
        _LOCAL_HITS.count += 1
        return entry

    async def _from_redis(self, code: str) -> tuple[Target | None, bool]:
        if self._redis_down_until > time.monotonic():
            return None, False
        try:
            with tracing.span("link.cache.redis"):
                raw = await self._redis.get(self._key(code))
        except _REDIS_FAULTS as exc:
            self._warn_degraded(code, exc)
            return None, False
        if raw is None:
            return None, False
        _REDIS_HITS.inc()
        return (None if raw == _MISSING else Target.loads(raw)), True

    async def _from_store(self, code: str) -> Target | None:
        with tracing.span("link.store"):
            link = await self._store.get_link(code)
        _STORE_LOOKUPS.inc()
        target = Target.of(link) if link else None
        raw = target.dumps() if target else _MISSING
        ttl = _REDIS_TTL_SECONDS if target else max(1, int(self._negative_ttl))
        if self._redis_down_until > time.monotonic():
            return target
        try:
            await self._redis.set(self._key(code), raw, ex=ttl, nx=True)
        except _REDIS_FAULTS as exc:
            self._warn_degraded(code, exc)
        return target

    def _remember(self, code: str, target: Target | None) -> None:
        if self._size <= 0:
            return
        ttl = self._ttl if target else min(self._ttl, self._negative_ttl)
        self._local[code] = (time.monotonic() + ttl, target)
        self._local.move_to_end(code)
        while len(self._local) > self._size:
            self._local.popitem(last=False)

    def _warn_degraded(self, code: str, exc: BaseException) -> None:
        now = time.monotonic()
        self._redis_down_until = now + _REDIS_PAUSE_SECONDS
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            logger.warning(
                "redirect cache unavailable for %r, served from store: %s", code, exc
            )

    async def publish_link(self, code: str, link: Link | None) -> None:
        """Write a changed link to Redis and tell every worker to forget it."""
        await self.publish_links([(code, link)])

    async def publish_links(self, changes: list[tuple[str, Link | None]]) -> None:
        """Write changed links to Redis and announce them, in one round trip.

        One message names every code, separated by spaces (no code holds one).
        A plain pipeline, not MULTI: Redis runs one connection's commands in
        order, so every SET lands before the announcement.
        """
        if not changes:
            return
        for code, _ in changes:
            self.forget(code)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for code, link in changes:
                    raw = Target.of(link).dumps() if link else _MISSING
                    pipe.set(self._key(code), raw, ex=_REDIS_TTL_SECONDS)
                codes = " ".join(code for code, _ in changes)
                pipe.publish(self._channel, codes.encode())
                await pipe.execute()
        except _REDIS_FAULTS as exc:
            # The change is stored; other workers see it when their local
            # copies expire (cache_ttl) and Redis's copy is rewritten.
            logger.warning("link change for %r not announced: %s", changes[0][0], exc)

    def forget(self, code: str | None = None) -> None:
        """Drop one code (or every code) from the local cache."""
        self._generation += 1
        if code is None:
            self._local.clear()
        else:
            self._local.pop(code, None)

    async def listen(self) -> None:
        """Drop local copies as changes are announced; run until cancelled."""
        while True:
            try:
                await self._listen_once()
            except _REDIS_FAULTS as exc:
                if not self._channel_lost:
                    logger.warning("link change channel lost, retrying: %s", exc)
                self._channel_lost = True
            finally:
                # Announcements may be missed while disconnected: no key is
                # trusted from the cache until the channel is back.
                self.keys.listening(False)
            self.forget()
            await asyncio.sleep(1.0)

    async def _listen_once(self) -> None:
        pubsub = self._pubsub_redis.pubsub()
        channels = {self._channel.encode(), self._key_channel.encode()}
        try:
            await pubsub.subscribe(*channels)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    # Redis's confirmation: from here on nothing is missed.
                    channels.discard(message["channel"])
                    if not channels:
                        self._subscribed()
                elif message["type"] != "message":
                    continue
                elif message["channel"] == self._key_channel.encode():
                    self.keys.forget()
                    await self._confirm_key_change(message["data"])
                else:
                    for code in message["data"].decode(errors="replace").split():
                        self.forget(code)
        finally:
            await pubsub.aclose()

    async def _confirm_key_change(self, data: bytes) -> None:
        """Tell the announcer of a key change that this worker forgot its keys."""
        _, _, token = data.decode(errors="replace").partition(" ")
        if not token:
            return
        acks = key_ack_list(self._prefix, token)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(acks, b"1")
                pipe.expire(acks, 60)
                await pipe.execute()
        except _REDIS_FAULTS as exc:
            logger.warning("key change not confirmed: %s", exc)

    def _subscribed(self) -> None:
        if self._channel_lost:
            self._channel_lost = False
            logger.info("link change channel back")
        self.forget()
        self.keys.listening(True)
