"""Generate random short codes and validate custom ones.

Random codes are :data:`RANDOM_CODE_LENGTH` characters drawn with
:mod:`secrets` from :data:`ALPHABET`: digits and ASCII letters without the
look-alikes ``0 O o 1 l I``, so a code read aloud or off paper survives.

Custom codes are chosen by the user and follow these rules:

- 1 to :data:`MAX_CUSTOM_CODE_LENGTH` characters from ``A-Z``, ``a-z``,
  ``0-9``, ``-`` and ``_``;
- case-sensitive: ``Promo`` and ``promo`` are two links;
- not one of :data:`RESERVED_CODES`, compared case-insensitively, because
  those names are routes of the app or files that crawlers ask for.
"""

from __future__ import annotations

import re
import secrets

from boltlink.errors import InvalidCode, ReservedCode

__all__ = [
    "ALPHABET",
    "MAX_CUSTOM_CODE_LENGTH",
    "RANDOM_CODE_LENGTH",
    "RESERVED_CODES",
    "is_reserved",
    "random_code",
    "validate_custom_code",
]

ALPHABET = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
"""Characters of random codes: digits and letters minus ``0 O o 1 l I``."""

RANDOM_CODE_LENGTH = 7
"""Length of a random code: 56**7, about 1.7e12 codes."""

MAX_CUSTOM_CODE_LENGTH = 64
"""Longest custom code accepted, in characters."""

RESERVED_CODES = frozenset(
    {
        "api",
        "health",
        "ready",
        "metrics",
        "docs",
        "openapi.json",
        "static",
        "admin",
        "stats",
        "qr",
        "preview",
        "unlock",
        "robots.txt",
        "favicon.ico",
        ".well-known",
        "yourls-api.php",
        "v4",
    }
)
"""Codes no link may take, in lower case; compared case-insensitively."""

_CUSTOM_CODE = re.compile(r"[A-Za-z0-9_-]+")
_CUSTOM_CODE_CHAR = re.compile(r"[^A-Za-z0-9_-]")


def random_code() -> str:
    """Return a fresh random code of :data:`RANDOM_CODE_LENGTH` characters."""
    # NOTE: "preview" fits the alphabet, so a draw can land on a reserved code;
    # drawing again keeps the odds of every other code unchanged.
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CODE_LENGTH))
        if not is_reserved(code):
            return code


def is_reserved(code: str) -> bool:
    """Return whether ``code`` names a reserved route, ignoring case."""
    return code.lower() in RESERVED_CODES


def validate_custom_code(raw: object) -> str:
    """Check ``raw`` against the custom code rules and return it unchanged.

    Raise :class:`~boltlink.errors.ReservedCode` for a reserved code, even one
    outside the charset, and :class:`~boltlink.errors.InvalidCode` for any
    other broken rule.
    """
    if not isinstance(raw, str):
        raise InvalidCode(
            f"code must be a string, not {type(raw).__name__}", field="code"
        )
    if not raw:
        raise InvalidCode("code must not be empty", field="code")
    if is_reserved(raw):
        raise ReservedCode(f"code {raw!r} is reserved", field="code")

    if len(raw) > MAX_CUSTOM_CODE_LENGTH:
        raise InvalidCode(
            f"code is {len(raw)} characters long; "
            f"the limit is {MAX_CUSTOM_CODE_LENGTH}",
            field="code",
        )
    if not _CUSTOM_CODE.fullmatch(raw):
        raise InvalidCode(_charset_detail(raw), field="code")
    return raw


def _charset_detail(code: str) -> str:
    found = _CUSTOM_CODE_CHAR.search(code)
    assert found is not None, "only called on a code outside the charset"
    return (
        f"code {code!r} contains {found.group()!r}; "
        f"use only letters A-Z and a-z, digits, '-' and '_'"
    )
