"""Test random code generation and the custom code rules."""

from __future__ import annotations

import pytest

from boltlink import codes
from boltlink.codes import (
    ALPHABET,
    RANDOM_CODE_LENGTH,
    RESERVED_CODES,
    is_reserved,
    random_code,
    validate_custom_code,
)
from boltlink.errors import InvalidCode, ReservedCode


def test_alphabet_has_no_look_alikes() -> None:
    assert not set("0Oo1lI") & set(ALPHABET)
    assert len(ALPHABET) == len(set(ALPHABET)) == 56


def test_random_code_has_length_and_alphabet() -> None:
    drawn = [random_code() for _ in range(1000)]

    assert all(len(code) == RANDOM_CODE_LENGTH == 7 for code in drawn)
    assert all(set(code) <= set(ALPHABET) for code in drawn)
    assert len(set(drawn)) > 990


def test_random_code_draws_again_on_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    letters = iter("preview" + "abcdefg")
    monkeypatch.setattr(codes.secrets, "choice", lambda _: next(letters))

    assert random_code() == "abcdefg"


@pytest.mark.parametrize(
    "raw",
    ["a", "Z", "7", "-", "_", "Promo", "promo", "summer-sale_2025", "a" * 64],
)
def test_validate_custom_code_accepts_charset(raw: str) -> None:
    assert validate_custom_code(raw) == raw


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (None, "code must be a string, not NoneType"),
        (42, "code must be a string, not int"),
        ("", "code must not be empty"),
        ("a" * 65, "code is 65 characters long; the limit is 64"),
        ("a b", "code 'a b' contains ' '"),
        ("a.b", "code 'a.b' contains '.'"),
        ("a/b", "code 'a/b' contains '/'"),
        ("café", "code 'café' contains 'é'"),
        ("\uff41bc", "code '\uff41bc' contains '\uff41'"),
        ("abc\n", "code 'abc\\n' contains '\\n'"),
        ("%41", "code '%41' contains '%'"),
    ],
)
def test_validate_custom_code_refuses_invalid(raw: object, detail: str) -> None:
    with pytest.raises(InvalidCode) as caught:
        validate_custom_code(raw)

    assert caught.value.code == "invalid_code"
    assert caught.value.field == "code"
    assert caught.value.detail.startswith(detail)


@pytest.mark.parametrize("raw", sorted(RESERVED_CODES))
def test_validate_custom_code_refuses_reserved(raw: str) -> None:
    with pytest.raises(ReservedCode) as caught:
        validate_custom_code(raw)

    assert caught.value.code == "reserved_code"
    assert caught.value.field == "code"
    assert caught.value.detail == f"code {raw!r} is reserved"


@pytest.mark.parametrize(
    "raw", ["API", "Health", "ROBOTS.TXT", "Favicon.ICO", ".Well-Known", "V4"]
)
def test_validate_custom_code_refuses_reserved_in_any_case(raw: str) -> None:
    with pytest.raises(ReservedCode):
        validate_custom_code(raw)


@pytest.mark.parametrize("raw", ["apis", "v5", "my-api", "stats2", "qr_"])
def test_validate_custom_code_accepts_near_reserved(raw: str) -> None:
    assert validate_custom_code(raw) == raw


@pytest.mark.parametrize(
    ("code", "expected"),
    [("docs", True), ("DOCS", True), ("docs.", False), ("", False), ("x", False)],
)
def test_is_reserved_ignores_case(code: str, expected: bool) -> None:
    assert is_reserved(code) is expected
