"""Keep, inspect and replay click stream entries that could not be applied.

A consumer moves an entry here when it cannot be decoded, or when it was
delivered more than ``BOLTLINK_MAX_DELIVERIES`` times without being
acknowledged. The dead-letter stream ``<prefix>clicks:dead`` holds one entry
per dead letter with these fields:

==============  ==========================================================
``stream``      the click stream partition the entry came from
``id``          the entry's key, the id sinks deduplicate on: its write id
                (field ``w``), else its original stream id
``entry``       the id it was delivered as (differs from ``id`` on replays)
``group``       the consumer group that gave up on it
``error``       why, in the consumer's words
``deliveries``  how many times the group had delivered it
``payload``     the entry's own fields, as a JSON object of text
==============  ==========================================================

Replaying adds the payload to its stream again as a new entry carrying two
more fields: ``only`` (the group that dead-lettered it; every other group
acknowledges it without applying it, since they may have counted the
original) and ``origin`` (the original id, which the sinks then deduplicate
on, so a dead letter replayed twice, or an entry applied just before it was
dead-lettered, still counts once).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis import exceptions as redis_errors

from boltlink.clicks import ORIGIN_FIELD, WRITE_FIELD
from boltlink.errors import BackendUnavailable, ConfigError
from boltlink.settings import Settings

__all__ = [
    "ONLY_FIELD",
    "ORIGIN_FIELD",
    "DeadLetter",
    "check_dead_ids",
    "dead_letter_stream",
    "dedup_key",
    "list_dead_letters",
    "purge_dead_letters",
    "record_dead_letter",
    "replay_dead_letters",
    "run_with_redis",
    "show_dead_letter",
]

T = TypeVar("T")

#: Field of a replayed entry naming the only group that may apply it.
ONLY_FIELD = b"only"

_REPLAY_FIELDS = {ONLY_FIELD, ORIGIN_FIELD}

_U64_MAX = 2**64 - 1
_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)


def dedup_key(entry_id: str, fields: Mapping[bytes, bytes]) -> str:
    """Return the key sinks deduplicate an entry on.

    A replay's origin, else the write id the recorder gave the entry (a
    copy written by a retry has the same), else the entry's stream id.
    """
    key = fields.get(ORIGIN_FIELD) or fields.get(WRITE_FIELD)
    return _text(key) if key else entry_id


def check_dead_ids(dead_ids: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every id is a full stream entry id.

    Redis stream ids are ``<ms>-<seq>``, both unsigned 64-bit integers
    (https://redis.io/docs/latest/develop/data-types/streams/); asking
    Redis about anything else only earns a protocol error.
    """
    for dead_id in dead_ids:
        match = _ENTRY_ID.fullmatch(dead_id)
        if match is None or max(int(part) for part in match.groups()) > _U64_MAX:
            raise ValueError(
                f"dead letter id {dead_id!r} is not <ms>-<seq> of two "
                "unsigned 64-bit integers"
            )


def dead_letter_stream(prefix: str) -> str:
    """Return the name of the dead-letter stream."""
    return f"{prefix}clicks:dead"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream, decoded."""

    dead_id: str
    stream: str
    entry_id: str
    delivered_as: str
    group: str
    error: str
    deliveries: int
    payload: dict[str, str]

    @classmethod
    def from_stream(cls, dead_id: Any, fields: Mapping[bytes, bytes]) -> DeadLetter:
        """Build a dead letter from its stream entry."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        payload = orjson.loads(text.get("payload", "{}"))
        return cls(
            dead_id=_text(dead_id),
            stream=text.get("stream", ""),
            entry_id=text.get("id", ""),
            delivered_as=text.get("entry", text.get("id", "")),
            group=text.get("group", ""),
            error=text.get("error", ""),
            deliveries=int(text.get("deliveries", "0") or 0),
            payload=payload if isinstance(payload, dict) else {},
        )


async def record_dead_letter(
    redis: Any,
    prefix: str,
    *,
    stream: str,
    entry_id: str,
    group: str,
    fields: Mapping[bytes, bytes],
    error: str,
    deliveries: int,
) -> str:
    """Copy one stream entry to the dead-letter stream; return its new id."""
    payload = {_text(k): _text(v) for k, v in fields.items() if k not in _REPLAY_FIELDS}
    dead_id = await redis.xadd(
        dead_letter_stream(prefix),
        {
            "stream": stream,
            "id": dedup_key(entry_id, fields),
            "entry": entry_id,
            "group": group,
            "error": error,
            "deliveries": str(deliveries),
            "payload": orjson.dumps(payload),
        },
    )
    return _text(dead_id)


async def list_dead_letters(
    redis: Any, prefix: str, *, count: int = 100
) -> list[DeadLetter]:
    """Return the oldest ``count`` dead letters."""
    entries = await redis.xrange(dead_letter_stream(prefix), count=count)
    return [DeadLetter.from_stream(dead_id, fields) for dead_id, fields in entries]


async def show_dead_letter(redis: Any, prefix: str, dead_id: str) -> DeadLetter | None:
    """Return the dead letter with this id, or ``None``."""
    check_dead_ids([dead_id])
    entries = await redis.xrange(dead_letter_stream(prefix), dead_id, dead_id)
    if not entries:
        return None
    return DeadLetter.from_stream(*entries[0])


async def replay_dead_letters(
    redis: Any, prefix: str, dead_ids: Sequence[str] | None
) -> list[tuple[DeadLetter, str]]:
    """Add dead letters back to their streams for their group alone.

    ``None`` replays every dead letter. Each one is removed from the
    dead-letter stream once its new entry is written; return each replayed
    dead letter with its new entry id.
    """
    letters = await _select(redis, prefix, dead_ids)
    replayed = []
    for letter in letters:
        # The new entry first, then the removal: a crash in between leaves
        # the dead letter in place, and replaying it again is harmless since
        # sinks deduplicate on the origin id.
        fields = {k.encode(): v.encode() for k, v in letter.payload.items()}
        fields[ONLY_FIELD] = letter.group.encode()
        fields[ORIGIN_FIELD] = letter.entry_id.encode()
        new_id = await redis.xadd(letter.stream, fields)
        await redis.xdel(dead_letter_stream(prefix), letter.dead_id)
        replayed.append((letter, _text(new_id)))
    return replayed


async def purge_dead_letters(
    redis: Any, prefix: str, dead_ids: Sequence[str] | None
) -> int:
    """Delete dead letters (``None``: all of them); return how many."""
    stream = dead_letter_stream(prefix)
    check_dead_ids(dead_ids or [])
    if dead_ids is None:
        count = int(await redis.xlen(stream))
        await redis.delete(stream)
        return count
    if not dead_ids:
        return 0
    return int(await redis.xdel(stream, *dead_ids))


async def _select(
    redis: Any, prefix: str, dead_ids: Sequence[str] | None
) -> list[DeadLetter]:
    if dead_ids is None:
        entries = await redis.xrange(dead_letter_stream(prefix))
        return [DeadLetter.from_stream(i, f) for i, f in entries]
    check_dead_ids(dead_ids)
    letters = []
    for dead_id in dead_ids:
        letter = await show_dead_letter(redis, prefix, dead_id)
        if letter is None:
            raise LookupError(f"no dead letter with id {dead_id!r}")
        letters.append(letter)
    return letters


def run_with_redis(settings: Settings, action: Callable[[Any, str], Awaitable[T]]) -> T:
    """Run ``action(redis, prefix)`` against the configured Redis and return.

    The operator commands need a Redis they can reach on their own: the
    embedded Valkey of ``boltlink serve`` listens on a random port.
    """
    if settings.redis_url is None:
        raise ConfigError(
            "boltlink dead-letters needs BOLTLINK_REDIS_URL; the embedded "
            "valkey of boltlink serve cannot be reached from another process"
        )
    from boltlink.backends import connect_redis

    async def main() -> T:
        redis = connect_redis(settings)
        try:
            return await action(redis, settings.redis_prefix)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc
        finally:
            await redis.aclose()

    return asyncio.run(main())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
