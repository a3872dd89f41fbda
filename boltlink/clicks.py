"""Name the click streams and encode the clicks their entries carry.

One stream entry carries one or more clicks, recorded together by the
redirect side's group commit. Its fields are ``v`` (format version), ``c``
(a JSON array of clicks) and ``w`` (the write id the recorder gave it, so a
copy written by a retry is recognised). Sinks deduplicate on the entry's
key: its write id, or for entries without one its stream id. An entry is
counted whole or not at all; a click's own id is the key plus its index in
the entry (``3f9a0c1b2d4e-17/3``), with the partition in front for
partitions other than 0 (``2:3f9a0c1b2d4e-17/3``): each partition numbers
its entries on its own, so two of them may hand out the same stream id.

The stream is split into partitions by link id. Each partition's name
carries a Redis Cluster hash tag (``boltlink:clicks:{0}``) so partitions can
sit on different slots while one partition's keys stay together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

from boltlink.codes import MAX_CUSTOM_CODE_LENGTH

__all__ = [
    "FORMAT_VERSION",
    "MAX_TS_MS",
    "MIN_TS_MS",
    "ORIGIN_FIELD",
    "WRITE_FIELD",
    "Click",
    "MalformedEntry",
    "decode_entry",
    "encode_clicks",
    "event_source",
    "partition_of",
    "stream_names",
]

FORMAT_VERSION = b"1"
#: Field holding the entry's write id, which the sinks deduplicate on.
WRITE_FIELD = b"w"
#: Field of a replayed entry holding the original key sinks deduplicate on.
ORIGIN_FIELD = b"origin"

#: Timestamps a click may carry, in ms: 2000-01-01 (inclusive) to
#: 2200-01-01 (exclusive) UTC. Both sinks take every instant between (the
#: ``DateTime64`` of ClickHouse ends in 2299, Python's datetime in 9999).
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 7_258_118_400_000
_MAX_LINK_ID = 2**63 - 1  # a Postgres bigint; ClickHouse stores UInt64

#: Wire field, longest text accepted: the redirect side cuts headers to
#: these lengths already (boltlink.web.redirect), so only a forged or
#: corrupted entry is longer.
_TEXT_FIELDS = {
    "ip": 64,
    "ua": 1024,
    "r": 2048,
    "al": 256,
    "cc": 2,
    "tp": 256,
}
# The same limits by name, for the one-test path of Click.from_wire.
_IP_MAX, _UA_MAX, _REFERRER_MAX, _LANGUAGE_MAX, _COUNTRY_MAX, _TRACE_MAX = (
    _TEXT_FIELDS.values()
)
_MAX_KEY_LENGTH = 128
_PRINTABLE = bytes(range(0x21, 0x7F))


class MalformedEntry(ValueError):
    """Raised when a stream entry cannot be decoded into clicks."""


@dataclass(frozen=True, slots=True)
class Click:
    """One counted redirect, as the redirect side saw it."""

    link_id: int
    code: str
    ts_ms: int
    ip: str = ""
    user_agent: str = ""
    referrer: str = ""
    accept_language: str = ""
    country: str = ""
    trace: str = ""

    def to_wire(self) -> dict[str, Any]:
        """Return the compact mapping stored in the stream."""
        wire: dict[str, Any] = {"l": self.link_id, "k": self.code, "t": self.ts_ms}
        for key, value in (
            ("ip", self.ip),
            ("ua", self.user_agent),
            ("r", self.referrer),
            ("al", self.accept_language),
            ("cc", self.country),
            ("tp", self.trace),
        ):
            if value:
                wire[key] = value
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> Click:
        """Build a click from its stream mapping; raise MalformedEntry if bad.

        Every sink decodes through here, so an entry one sink would refuse
        (a timestamp past year 9999, a link id beyond bigint) is refused
        for all of them alike, and dead-lettered by each group.
        """
        # Ingest decodes every click it stores: a valid wire, what orjson
        # gives (exact dict, int and str types), takes one test and no
        # dataclass __init__; anything else goes through the checks that
        # name what is wrong, which accept exactly the same clicks.
        if type(wire) is dict:
            get = wire.get
            link_id, code, ts_ms = get("l"), get("k"), get("t")
            ip, ua, r = get("ip", ""), get("ua", ""), get("r", "")
            al, cc, tp = get("al", ""), get("cc", ""), get("tp", "")
            if (
                type(link_id) is int
                and 1 <= link_id <= _MAX_LINK_ID
                and type(ts_ms) is int
                and MIN_TS_MS <= ts_ms < MAX_TS_MS
                and type(code) is str
                and len(code) <= MAX_CUSTOM_CODE_LENGTH
                and type(ip) is str
                and len(ip) <= _IP_MAX
                and type(ua) is str
                and len(ua) <= _UA_MAX
                and type(r) is str
                and len(r) <= _REFERRER_MAX
                and type(al) is str
                and len(al) <= _LANGUAGE_MAX
                and type(cc) is str
                and len(cc) <= _COUNTRY_MAX
                and type(tp) is str
                and len(tp) <= _TRACE_MAX
            ):
                return _new_click(link_id, code, ts_ms, ip, ua, r, al, cc, tp)
        return cls._from_wire_checked(wire)

    @classmethod
    def _from_wire_checked(cls, wire: Any) -> Click:
        if not isinstance(wire, dict):
            raise MalformedEntry(f"click must be an object, got {type(wire).__name__}")
        try:
            link_id, code, ts_ms = wire["l"], wire["k"], wire["t"]
        except KeyError as exc:
            raise MalformedEntry(f"click lacks field {exc.args[0]!r}") from None
        _check_int("link id", link_id, 1, _MAX_LINK_ID)
        _check_int("timestamp", ts_ms, MIN_TS_MS, MAX_TS_MS - 1)
        _check_text("code", code, MAX_CUSTOM_CODE_LENGTH)

        extras = {k: wire.get(k, "") for k in _TEXT_FIELDS}
        for key, limit in _TEXT_FIELDS.items():
            _check_text(f"field {key!r}", extras[key], limit)
        return cls(
            link_id=link_id,
            code=code,
            ts_ms=ts_ms,
            ip=extras["ip"],
            user_agent=extras["ua"],
            referrer=extras["r"],
            accept_language=extras["al"],
            country=extras["cc"],
            trace=extras["tp"],
        )


# The frozen dataclass's __init__ sets each field through object.__setattr__;
# the slot descriptors set them in about half the time.
(
    _set_link_id,
    _set_code,
    _set_ts_ms,
    _set_ip,
    _set_user_agent,
    _set_referrer,
    _set_accept_language,
    _set_country,
    _set_trace,
) = (getattr(Click, f.name).__set__ for f in fields(Click))


def _new_click(
    link_id: int,
    code: str,
    ts_ms: int,
    ip: str,
    user_agent: str,
    referrer: str,
    accept_language: str,
    country: str,
    trace: str,
) -> Click:
    """Return the click of checked values, fields in declaration order."""
    click = object.__new__(Click)
    _set_link_id(click, link_id)
    _set_code(click, code)
    _set_ts_ms(click, ts_ms)
    _set_ip(click, ip)
    _set_user_agent(click, user_agent)
    _set_referrer(click, referrer)
    _set_accept_language(click, accept_language)
    _set_country(click, country)
    _set_trace(click, trace)
    return click


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    # JSON true decodes to a bool, which Python counts as an int.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEntry(f"click {name} must be an integer, got {value!r:.80}")
    if not low <= value <= high:
        raise MalformedEntry(f"click {name} {value} is outside {low}..{high}")


def _check_text(name: str, value: Any, limit: int) -> None:
    if not isinstance(value, str):
        raise MalformedEntry(f"click {name} must be a string")
    if len(value) > limit:
        raise MalformedEntry(
            f"click {name} is {len(value)} characters long, the limit is {limit}"
        )


def _check_key(name: bytes, value: bytes | None) -> None:
    # The aggregate sink stores the key as text: Postgres refuses a NUL in
    # one, so only printable ASCII is taken, as the recorder writes it.
    if value is None:
        return
    if not (
        0 < len(value) <= _MAX_KEY_LENGTH and not value.translate(None, _PRINTABLE)
    ):
        raise MalformedEntry(
            f"click entry field {name.decode()!r} {value[:80]!r} is not a key of "
            f"1 to {_MAX_KEY_LENGTH} printable ascii characters"
        )


def stream_names(prefix: str, partitions: int) -> list[str]:
    """Return the name of every click stream partition."""
    return [f"{prefix}clicks:{{{n}}}" for n in range(partitions)]


def partition_of(link_id: int, partitions: int) -> int:
    """Return the partition a link's clicks go to."""
    return link_id % partitions


def event_source(stream: str, entry_id: str) -> str:
    """Return what the event ids of an entry's clicks start with.

    Partition 0 keeps the bare entry id, so a single-partition stream (the
    default) has the ids it always had.
    """
    partition = stream.rpartition("{")[2].rstrip("}")
    if partition in ("", "0") or not partition.isdigit():
        return entry_id
    return f"{partition}:{entry_id}"


def encode_clicks(
    clicks: list[Click], *, write_id: str | None = None
) -> dict[bytes, bytes]:
    """Return the fields of one stream entry carrying ``clicks``."""
    fields = {b"v": FORMAT_VERSION, b"c": orjson.dumps([c.to_wire() for c in clicks])}
    if write_id is not None:
        fields[WRITE_FIELD] = write_id.encode()
    return fields


def decode_entry(fields: Mapping[bytes, bytes]) -> list[Click]:
    """Return the clicks an entry carries; raise MalformedEntry if it is bad."""
    version = fields.get(b"v")
    if version != FORMAT_VERSION:
        raise MalformedEntry(f"unknown click entry version {version!r}")
    for name in (WRITE_FIELD, ORIGIN_FIELD):
        _check_key(name, fields.get(name))
    try:
        wires = orjson.loads(fields[b"c"])
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise MalformedEntry(f"click entry payload unreadable: {exc}") from None
    if not isinstance(wires, list) or not wires:
        raise MalformedEntry("click entry payload must be a non-empty array")
    return [Click.from_wire(w) for w in wires]
