"""Declare the link store interface that the SQLite and Postgres backends share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from boltlink.models import ApiKey, Link, NewLink

__all__ = ["UPDATABLE_FIELDS", "ClickBatchEntry", "LinkStore"]

#: Fields of a link that ``update_link`` may change.
UPDATABLE_FIELDS = frozenset({"url", "title", "tags", "expires_at", "redirect_status"})

#: One stream entry as the aggregate sink sees it: the entry id and the number
#: of clicks it carries per link id.
ClickBatchEntry = tuple[str, Mapping[int, int]]


class LinkStore(Protocol):
    """Store links, API keys and click counters; one interface, two backends.

    Every method is safe to call from many tasks at once. Methods that write
    either commit fully or raise, leaving nothing half-stored.
    """

    async def open(self) -> None:
        """Connect (open the pool or the database file)."""

    async def close(self) -> None:
        """Release every connection."""

    async def ping(self) -> None:
        """Run a trivial query; raise ``BackendUnavailable`` on failure."""

    async def create_link(self, new: NewLink) -> Link:
        """Insert a link; raise ``CodeTaken`` if (domain, code) exists."""

    async def create_links(self, news: Sequence[NewLink]) -> list[Link | None]:
        """Insert several links in one transaction; None where a code is taken.

        The answer follows the order of ``news``. No (domain, code) may appear
        twice in ``news`` (``ValueError``): the caller decides which of two
        requests for one code is first. Any other failure stores nothing.
        """

    async def get_link(self, code: str, domain: str = "") -> Link | None:
        """Return the link with exactly this code, deleted ones included."""

    async def list_links(
        self, *, limit: int, before_id: int | None = None, tag: str | None = None
    ) -> list[Link]:
        """Return live links newest first, ids below ``before_id``, by tag."""

    async def update_link(
        self, code: str, changes: Mapping[str, Any], domain: str = ""
    ) -> Link:
        """Apply ``changes`` (keys from UPDATABLE_FIELDS) to a live link.

        Raise ``LinkNotFound`` if no link has the code and ``LinkGone`` if it
        was deleted.
        """

    async def delete_link(self, code: str, domain: str = "") -> Link:
        """Mark a live link deleted and return it; same errors as update."""

    async def apply_clicks(
        self, stream: str, entries: Sequence[ClickBatchEntry]
    ) -> int:
        """Add the clicks of new entries to their links, in one transaction.

        Entry ids already applied for ``stream`` are skipped, so a batch
        delivered again changes nothing. Return how many entries were new.
        """

    async def prune_applied(self, older_than: datetime) -> int:
        """Forget applied entry ids recorded before ``older_than``."""

    async def link_ids_created_by(self, key_id: int) -> list[int]:
        """Return the ids of every link the key created, deleted ones included."""

    async def link_codes(self, link_ids: Sequence[int]) -> dict[int, str]:
        """Return the code of each of these link ids that exists."""

    async def create_key(
        self, *, name: str, scopes: Sequence[str], key_hash: str, prefix: str
    ) -> ApiKey:
        """Store a new API key by its SHA-256 digest."""

    async def get_key(self, key_hash: str) -> ApiKey | None:
        """Return the key with this digest, revoked or not."""

    async def list_keys(self) -> list[ApiKey]:
        """Return every key, oldest first."""

    async def revoke_key(self, key_id: int) -> ApiKey | None:
        """Revoke a key; return it, or ``None`` if no key has this id."""
