"""Define the records that move between the stores, the app and the workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["SCOPES", "ApiKey", "Link", "NewLink"]

#: Every scope an API key can hold; ``admin`` implies all the others.
SCOPES = ("links:read", "links:write", "analytics:read", "admin")


@dataclass(frozen=True, slots=True)
class Link:
    """A short link as stored, tombstones of deleted links included."""

    id: int
    code: str
    url: str
    title: str | None
    tags: tuple[str, ...]
    redirect_status: int
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    clicks: int
    created_by: int | None
    domain: str = ""


@dataclass(frozen=True, slots=True)
class NewLink:
    """What the API hands the store to create a link; the code is final."""

    code: str
    url: str
    title: str | None = None
    tags: tuple[str, ...] = ()
    redirect_status: int = 302
    expires_at: datetime | None = None
    created_by: int | None = None
    domain: str = ""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: its SHA-256 digest, never the key itself."""

    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = field(default=None, compare=False)

    def allows(self, scope: str) -> bool:
        """Tell whether this key may act under ``scope``."""
        return self.revoked_at is None and (
            scope in self.scopes or "admin" in self.scopes
        )
