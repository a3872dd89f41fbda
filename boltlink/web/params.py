"""Read what a request carries (path, query, body) before anything else sees it.

Every value from a request passes here first, so that no store, cache or
ClickHouse query ever receives a value it cannot hold: a code outside the
code charset is simply not found, a cursor is range-checked before it
becomes a 64-bit id, a tag filter follows the rules of stored tags, and a
body is read against its size limit as it arrives, not after.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import unicodedata
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from boltlink.errors import (
    BodyTimeout,
    ClientGone,
    InvalidJson,
    LinkNotFound,
    PayloadTooLarge,
    UnsupportedMedia,
    ValidationFailed,
)

__all__ = [
    "CODE_SHAPE",
    "MAX_BODY_BYTES",
    "MAX_TAG_LENGTH",
    "check_tag",
    "code_param",
    "decode_cursor",
    "encode_cursor",
    "is_decimal",
    "is_plain_text",
    "read_json",
    "tag_param",
]

MAX_BODY_BYTES = 64 * 1024
#: Longest wait for a request body, from its first byte asked for to its last.
BODY_SECONDS = 30.0
MAX_TAG_LENGTH = 64
#: Any code the API could have stored (custom and random codes alike).
CODE_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Ids are BIGINT in Postgres and INTEGER in SQLite: both signed 64-bit.
_MAX_ID = 2**63 - 1
_JSON_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def code_param(request: Request) -> str:
    """Return the ``{code}`` of the path, or raise not found for any other shape."""
    code: str = request.path_params["code"]
    if not CODE_SHAPE.fullmatch(code):
        raise LinkNotFound(f"code {code[:80]!r} not found")
    return code


def check_tag(tag: object, field: str) -> str:
    """Return ``tag`` if it is a string a link may carry as a tag."""
    if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_LENGTH:
        raise ValidationFailed(
            f"each tag must be a string of 1 to {MAX_TAG_LENGTH} characters, "
            f"got {tag!r:.80}",
            field=field,
        )
    if not is_plain_text(tag):
        raise ValidationFailed(
            f"tag {tag!r} contains control characters or is not text", field=field
        )
    return tag


def is_plain_text(text: str) -> bool:
    """Tell whether ``text`` holds no control character (C0, DEL, C1) or surrogate.

    A lone surrogate cannot be encoded as UTF-8, so no store could keep it.
    """
    return not any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in text)


def tag_param(request: Request) -> str | None:
    """Return the ``tag`` filter of the query string, checked like a stored tag."""
    tag = request.query_params.get("tag")
    return None if tag is None else check_tag(tag, "tag")


def encode_cursor(link_id: int) -> str:
    """Return the opaque cursor that continues a listing after ``link_id``."""
    return base64.urlsafe_b64encode(f"id:{link_id}".encode()).decode().rstrip("=")


def is_decimal(text: str) -> bool:
    """Tell whether ``text`` is ASCII digits only.

    ``int()`` also reads " 1", "+1", "1_0" and other scripts' digits
    ("\u0663"), none of which BoltLink ever hands out.
    """
    return text.isascii() and text.isdigit()


def decode_cursor(cursor: str) -> int:
    """Return the link id inside ``cursor``, refusing any forged or odd one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "id" or not is_decimal(value):
            raise ValueError(kind)
        link_id = int(value)
        if not 1 <= link_id <= _MAX_ID:
            raise ValueError(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            f"cursor {cursor[:80]!r} is not valid", field="cursor"
        ) from None
    return link_id


async def read_json(request: Request) -> dict[str, Any]:
    """Read a request body that must be one JSON object of bounded size."""
    _check_media_type(request.headers.get("content-type"))
    _check_coding(request.headers.get("content-encoding"))
    declared = request.headers.get("content-length", "")
    if is_decimal(declared) and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body is {declared} bytes, limit {MAX_BODY_BYTES}")

    # Stop reading once the limit is passed: a chunked body has no length
    # to check up front.
    chunks: list[bytes] = []
    size = 0
    # A body that trickles in holds a worker's memory and a connection: the
    # whole of it must arrive within BODY_SECONDS.
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise PayloadTooLarge(
                        f"body is over the limit of {MAX_BODY_BYTES} bytes"
                    )
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(f"client hung up after {size} bytes of its body") from None
    except TimeoutError:
        raise BodyTimeout(
            f"body not sent within {BODY_SECONDS:g} s ({size} bytes arrived)"
        ) from None
    return parse_body(b"".join(chunks))


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body is {len(raw)} bytes, limit {MAX_BODY_BYTES}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        kind = _JSON_NAMES.get(type(body), "not an object")
        raise InvalidJson(f"body must be a JSON object, got {kind}")
    _refuse_repeated_keys(raw, body)
    return body


def _refuse_repeated_keys(raw: bytes, body: dict[str, Any]) -> None:
    # orjson keeps the last of a repeated key, where a proxy or a log before
    # BoltLink may have read the first ({"url": good, "url": evil}). The
    # strict read runs only when a key shows twice in the raw bytes or an
    # escape could spell one differently ("\u0075rl").
    if b"\\u" in raw or any(raw.count(f'"{key}"'.encode()) > 1 for key in body):
        try:
            json.loads(raw, object_pairs_hook=_unique_pairs)
        except RecursionError:
            # orjson reads 1,024 levels, the standard library fewer.
            raise InvalidJson("body nests too deeply") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise InvalidJson(f"body repeats the key {key[:64]!r}")
        found[key] = value
    return found


def _check_coding(coding: str | None) -> None:
    # A body BoltLink does not decode (gzip, br...) would be read as the
    # raw bytes it is, and a plain body declared compressed stored as if
    # it were not: both are refused (RFC 9110 section 15.5.16).
    if coding is None or coding.strip().lower() in ("", "identity"):
        return
    raise UnsupportedMedia(
        f"body must not be content-coded, got Content-Encoding {coding[:40]!r}"
    )


def _check_media_type(content_type: str | None) -> None:
    # A body sent without a type is read as JSON (many scripts omit it);
    # one declared as anything else, a form post say, is refused rather
    # than guessed at (RFC 9110 section 15.5.16).
    if content_type is None:
        return
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    raise UnsupportedMedia(
        f"body must be sent as application/json, got {content_type[:80]!r}"
    )
