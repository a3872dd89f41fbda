"""Test the click wire format: what decodes, and how a bad entry is refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from boltlink.clicks import (
    MAX_TS_MS,
    MIN_TS_MS,
    Click,
    MalformedEntry,
    decode_entry,
    encode_clicks,
)

GOOD = {"l": 7, "k": "abc", "t": 1_741_500_000_123}
FULL = Click(
    link_id=2**63 - 1,
    code="x" * 64,
    ts_ms=MAX_TS_MS - 1,
    ip="2001:db8::1",
    user_agent='Mozilla/5.0 \U0001f600 "quoted" back\\slash',
    referrer="https://e.com/\t\n?q=\u00e9",
    accept_language="fr-CH, fr;q=0.9",
    country="ch",
    trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
)


def test_clicks_survive_the_wire_exactly() -> None:
    clicks = [FULL, Click(1, "", MIN_TS_MS), Click(5, "c", MIN_TS_MS + 1, ip="::")]

    assert decode_entry(encode_clicks(clicks, write_id="3f9a0c1b2d4e-17")) == clicks


def test_click_from_wire_keeps_values_at_their_limits() -> None:
    wire = {
        **GOOD,
        "ip": "i" * 64,
        "ua": "u" * 1024,
        "r": "r" * 2048,
        "al": "a" * 256,
        "cc": "cc",
        "tp": "t" * 256,
    }

    click = Click.from_wire(wire)

    assert (click.ip, click.user_agent, click.referrer) == (
        "i" * 64,
        "u" * 1024,
        "r" * 2048,
    )
    assert (click.accept_language, click.country, click.trace) == (
        "a" * 256,
        "cc",
        "t" * 256,
    )


class _Mapping(dict[str, Any]):
    """A dict subclass, as a caller other than orjson might pass."""


class _Int(int):
    """An int subclass that is not a bool."""


def test_click_from_wire_takes_dict_and_int_subclasses() -> None:
    click = Click.from_wire(_Mapping({**GOOD, "l": _Int(9)}))

    assert click == Click(9, "abc", 1_741_500_000_123)


# Each refused wire with its message, word for word: both sinks dead-letter
# an entry with this text as its error.
REFUSED: list[tuple[Any, str]] = [
    ([GOOD], "click must be an object, got list"),
    ("x", "click must be an object, got str"),
    ({"k": "a", "t": GOOD["t"]}, "click lacks field 'l'"),
    ({"l": 1, "t": GOOD["t"]}, "click lacks field 'k'"),
    ({"l": 1, "k": "a"}, "click lacks field 't'"),
    ({**GOOD, "l": True}, "click link id must be an integer, got True"),
    ({**GOOD, "l": 1.0}, "click link id must be an integer, got 1.0"),
    ({**GOOD, "l": None}, "click link id must be an integer, got None"),
    ({**GOOD, "l": "9" * 100}, "click link id must be an integer, got '" + "9" * 79),
    ({**GOOD, "l": 0}, "click link id 0 is outside 1..9223372036854775807"),
    ({**GOOD, "l": 2**63}, f"click link id {2**63} is outside 1..{2**63 - 1}"),
    ({**GOOD, "l": -1}, f"click link id -1 is outside 1..{2**63 - 1}"),
    ({**GOOD, "t": False}, "click timestamp must be an integer, got False"),
    (
        {**GOOD, "t": MIN_TS_MS - 1},
        f"click timestamp {MIN_TS_MS - 1} is outside {MIN_TS_MS}..{MAX_TS_MS - 1}",
    ),
    (
        {**GOOD, "t": MAX_TS_MS},
        f"click timestamp {MAX_TS_MS} is outside {MIN_TS_MS}..{MAX_TS_MS - 1}",
    ),
    # The link id is checked before the timestamp, the timestamp before the code.
    ({**GOOD, "l": 0, "t": 0}, f"click link id 0 is outside 1..{2**63 - 1}"),
    ({**GOOD, "t": 0, "k": 5}, f"click timestamp 0 is outside {MIN_TS_MS}.."),
    ({**GOOD, "k": 5}, "click code must be a string"),
    ({**GOOD, "k": "x" * 65}, "click code is 65 characters long, the limit is 64"),
    ({**GOOD, "ip": 4}, "click field 'ip' must be a string"),
    (
        {**GOOD, "ip": "1" * 65},
        "click field 'ip' is 65 characters long, the limit is 64",
    ),
    ({**GOOD, "ua": None}, "click field 'ua' must be a string"),
    (
        {**GOOD, "ua": "u" * 1025},
        "click field 'ua' is 1025 characters long, the limit is 1024",
    ),
    (
        {**GOOD, "r": "r" * 2049},
        "click field 'r' is 2049 characters long, the limit is 2048",
    ),
    ({**GOOD, "al": ["en"]}, "click field 'al' must be a string"),
    (
        {**GOOD, "al": "a" * 257},
        "click field 'al' is 257 characters long, the limit is 256",
    ),
    ({**GOOD, "cc": 7}, "click field 'cc' must be a string"),
    ({**GOOD, "cc": "USA"}, "click field 'cc' is 3 characters long, the limit is 2"),
    ({**GOOD, "tp": {}}, "click field 'tp' must be a string"),
    (
        {**GOOD, "tp": "t" * 257},
        "click field 'tp' is 257 characters long, the limit is 256",
    ),
    # Fields are checked in wire order: ip, ua, r, al, cc, tp.
    ({**GOOD, "tp": 1, "ip": 1}, "click field 'ip' must be a string"),
    ({**GOOD, "cc": 1, "r": "r" * 2049}, "click field 'r' is 2049 characters long"),
]


@pytest.mark.parametrize(("wire", "message"), REFUSED)
def test_click_from_wire_refuses_with_a_clear_message(wire: Any, message: str) -> None:
    with pytest.raises(MalformedEntry) as caught:
        Click.from_wire(wire)

    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("wire", "message"), REFUSED)
def test_decode_entry_refuses_any_bad_click_of_an_entry(
    wire: Any, message: str
) -> None:
    fields = {b"v": b"1", b"c": orjson.dumps([GOOD, wire]), b"w": b"abc-1"}

    with pytest.raises(MalformedEntry) as caught:
        decode_entry(fields)

    assert str(caught.value).startswith(message)


ENTRIES: list[tuple[dict[bytes, bytes], str]] = [
    ({b"c": b"[]"}, "unknown click entry version None"),
    ({b"v": b"2", b"c": b"[]"}, "unknown click entry version b'2'"),
    ({b"v": b"1"}, "click entry payload unreadable: b'c'"),
    ({b"v": b"1", b"c": b"{broken"}, "click entry payload unreadable: "),
    ({b"v": b"1", b"c": b"[]"}, "click entry payload must be a non-empty array"),
    ({b"v": b"1", b"c": b"{}"}, "click entry payload must be a non-empty array"),
    (
        {b"v": b"1", b"c": b"[{}]", b"w": b""},
        "click entry field 'w' b'' is not a key of 1 to 128 printable ascii",
    ),
    (
        {b"v": b"1", b"c": b"[{}]", b"w": b"a b"},
        "click entry field 'w' b'a b' is not a key of 1 to 128 printable ascii",
    ),
    (
        {b"v": b"1", b"c": b"[{}]", b"w": b"w\x00-1"},
        "click entry field 'w' b'w\\x00-1' is not a key",
    ),
    (
        {b"v": b"1", b"c": b"[{}]", b"w": b"a\x7f"},
        "click entry field 'w' b'a\\x7f' is not a key",
    ),
    (
        {b"v": b"1", b"c": b"[{}]", b"w": "\u00e9".encode()},
        "click entry field 'w' b'\\xc3\\xa9' is not a key",
    ),
    (
        {b"v": b"1", b"c": b"[{}]", b"origin": b"o" * 129},
        f"click entry field 'origin' {b'o' * 80!r} is not a key of 1 to 128",
    ),
]


@pytest.mark.parametrize(("fields", "message"), ENTRIES)
def test_decode_entry_refuses_a_bad_envelope(
    fields: dict[bytes, bytes], message: str
) -> None:
    with pytest.raises(MalformedEntry) as caught:
        decode_entry(fields)

    assert str(caught.value).startswith(message)


def test_decode_entry_takes_keys_of_every_printable_character() -> None:
    printable = bytes(range(0x21, 0x7F))
    fields = {b"v": b"1", b"c": orjson.dumps([GOOD]), b"w": printable}

    assert decode_entry({**fields, b"origin": b"o" * 128}) == [Click.from_wire(GOOD)]
