"""Say which clicks a cross-link question covers: a range, bots and links."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from boltlink.analytics.queries import BOT_CONDITION, Source, StatsQuery, source_for

__all__ = ["Scope"]


@dataclass(frozen=True)
class Scope:
    """A half-open UTC range, a bot filter and the links a key may see.

    ``link_ids`` of ``None`` means every link (an admin key); an empty tuple
    means none, and every answer is then empty.
    """

    start: datetime
    end: datetime
    bots: str = "exclude"
    tz: str = "UTC"
    link_ids: tuple[int, ...] | None = None

    def bot_condition(self) -> str:
        """Return the SQL condition of the bot filter."""
        return BOT_CONDITION[self.bots]

    def link_condition(self) -> str:
        """Return the SQL condition that keeps the scope's links."""
        if self.link_ids is None:
            return "1"
        if not self.link_ids:
            return "0"
        return "link_id IN {links:Array(UInt64)}"

    def params(self) -> dict[str, Any]:
        """Return the bound parameters the conditions refer to."""
        return {
            "start": self.start,
            "end": self.end,
            "tz": self.tz,
            "links": list(self.link_ids or ()),
        }

    def source(self, *, zoned: bool) -> Source:
        """Return the cheapest exact source: for days in the zone if ``zoned``.

        A question that cuts no days (totals, groups by link or dimension)
        only needs the range on whole hours, whatever the zone.
        """
        tz = self.tz if zoned else "UTC"
        return source_for(StatsQuery(self.start, self.end, "day", tz, self.bots))
