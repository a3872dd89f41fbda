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
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "FORMAT_VERSION",
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
        """Build a click from its stream mapping; raise MalformedEntry if bad."""
        if not isinstance(wire, dict):
            raise MalformedEntry(f"click must be an object, got {type(wire).__name__}")
        try:
            link_id, code, ts_ms = wire["l"], wire["k"], wire["t"]
        except KeyError as exc:
            raise MalformedEntry(f"click lacks field {exc.args[0]!r}") from None
        if not (isinstance(link_id, int) and isinstance(ts_ms, int)):
            raise MalformedEntry("click link id and timestamp must be integers")
        if not isinstance(code, str):
            raise MalformedEntry("click code must be a string")
        extras = {k: wire.get(k, "") for k in ("ip", "ua", "r", "al", "cc", "tp")}
        if not all(isinstance(v, str) for v in extras.values()):
            raise MalformedEntry("click text fields must be strings")
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
    try:
        wires = orjson.loads(fields[b"c"])
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise MalformedEntry(f"click entry payload unreadable: {exc}") from None
    if not isinstance(wires, list) or not wires:
        raise MalformedEntry("click entry payload must be a non-empty array")
    return [Click.from_wire(w) for w in wires]
