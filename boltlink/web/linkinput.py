"""Check the JSON bodies of the links API field by field.

Each field has one checker that returns the value to store or raises a
``ValidationFailed`` naming the field. Unknown fields are refused rather
than ignored, so a misspelt ``expire_at`` is an error, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from boltlink.codes import validate_custom_code
from boltlink.destinations import validate_destination
from boltlink.errors import ValidationFailed
from boltlink.timestamps import parse_rfc3339
from boltlink.web.params import check_tag, is_plain_text

__all__ = [
    "REDIRECT_STATUSES",
    "parse_create",
    "parse_patch",
]

#: RFC 9110 section 15.4: 301/308 are permanent (308 keeps the method),
#: 302/307 temporary (307 keeps the method).
REDIRECT_STATUSES = (301, 302, 307, 308)
MAX_TITLE_LENGTH = 512
MAX_TAGS = 32


def _title(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed("title must be a string or null", field="title")
    if len(value) > MAX_TITLE_LENGTH:
        raise ValidationFailed(
            f"title is {len(value)} characters, limit {MAX_TITLE_LENGTH}",
            field="title",
        )
    if not is_plain_text(value):
        raise ValidationFailed(
            "title must not contain control characters", field="title"
        )
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationFailed("tags must be an array of strings", field="tags")
    if len(value) > MAX_TAGS:
        raise ValidationFailed(
            f"at most {MAX_TAGS} tags, got {len(value)}", field="tags"
        )
    tags = {check_tag(tag, "tags") for tag in value}
    return tuple(sorted(tags))


def _expires_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(
            "expires_at must be an RFC 3339 timestamp or null", field="expires_at"
        )
    moment = parse_rfc3339(value)
    if moment is None:
        raise ValidationFailed(
            f"expires_at {value[:80]!r} is not an RFC 3339 timestamp "
            "(2030-01-31T12:00:00Z, with an offset)",
            field="expires_at",
        )
    # Stored in UTC: a moment whose UTC form leaves year 1-9999 cannot be.
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(
            f"expires_at {value!r} is out of range", field="expires_at"
        ) from None
    if moment <= datetime.now(UTC):
        raise ValidationFailed(
            f"expires_at {value!r} is not in the future", field="expires_at"
        )
    return moment


def _redirect_status(value: Any) -> int:
    if value is None:
        return 302
    if type(value) is not int or value not in REDIRECT_STATUSES:
        allowed = ", ".join(map(str, REDIRECT_STATUSES))
        raise ValidationFailed(
            f"redirect_status must be one of {allowed}, got {value!r}",
            field="redirect_status",
        )
    return value


_CHECKERS: dict[str, Callable[[Any], Any]] = {
    "title": _title,
    "tags": _tags,
    "expires_at": _expires_at,
    "redirect_status": _redirect_status,
}


def _refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationFailed(
            f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
            field=unknown[0],
        )


def parse_create(body: dict[str, Any], *, public_host: str) -> dict[str, Any]:
    """Return the checked fields of a create request; ``code`` may be None."""
    _refuse_unknown(body, {"url", "code", *_CHECKERS})
    if "url" not in body:
        raise ValidationFailed("url is required", field="url")
    fields = {
        "url": validate_destination(body["url"], public_host=public_host),
        "code": None
        if body.get("code") is None
        else validate_custom_code(body["code"]),
    }
    for name, check in _CHECKERS.items():
        fields[name] = check(body.get(name))
    return fields


def parse_patch(body: dict[str, Any], *, public_host: str) -> dict[str, Any]:
    """Return the checked fields of an update request, only those given."""
    if "code" in body:
        raise ValidationFailed("a link's code cannot be changed", field="code")
    _refuse_unknown(body, {"url", *_CHECKERS})
    changes: dict[str, Any] = {}
    if "url" in body:
        changes["url"] = validate_destination(body["url"], public_host=public_host)
    for name, check in _CHECKERS.items():
        if name in body:
            changes[name] = check(body[name])
    return changes
