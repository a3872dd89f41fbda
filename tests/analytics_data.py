"""Create links under several keys and ingest a fixed set of clicks for them.

Shared by the overview, global and export tests. Keys: ``auth`` (the test
key, no admin), ``other`` (another key) and ``admin``. Links: ``alpha`` and
``beta`` made with ``auth``, ``gamma`` made with ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boltlink import analytics
from boltlink.apikeys import generate_key, hash_key, key_prefix
from boltlink.clicks import Click
from boltlink.workers.sinks import IngestSink

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36"
SAFARI_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.0 Mobile/15E148 Safari/604.1"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
HN = "https://news.ycombinator.com/item?id=1"

# (link, UTC time, user agent, country, referrer)
EVENTS = [
    ("alpha", "2025-03-09T01:00:00", CHROME, "US", HN),
    ("alpha", "2025-03-09T02:00:00", CHROME, "US", HN),
    ("alpha", "2025-03-09T03:00:00", CHROME, "US", HN),
    ("alpha", "2025-03-09T05:00:00", GOOGLEBOT, "US", ""),
    ("alpha", "2025-03-10T01:00:00", SAFARI_IPHONE, "FR", ""),
    ("alpha", "2025-03-10T02:00:00", SAFARI_IPHONE, "FR", ""),
    ("beta", "2025-03-09T10:00:00", FIREFOX_LINUX, "DE", ""),
    ("beta", "2025-03-09T11:00:00", FIREFOX_LINUX, "DE", ""),
    ("beta", "2025-03-10T10:00:00", CHROME, "US", ""),
    ("beta", "2025-03-10T11:00:00", SLACKBOT, "", ""),
    ("gamma", "2025-03-09T12:00:00", CHROME, "US", ""),
    ("gamma", "2025-03-09T12:00:01", CHROME, "US", ""),
    ("gamma", "2025-03-09T12:00:02", CHROME, "US", ""),
    ("gamma", "2025-03-09T12:00:03", CHROME, "US", ""),
]

RANGE = {"from": "2025-03-09", "to": "2025-03-11"}


@dataclass
class World:
    """The keys' headers and the created links, by code."""

    auth: dict[str, str]
    other: dict[str, str]
    admin: dict[str, str]
    links: dict[str, Any]


async def make_key(app: Any, scopes: list[str]) -> dict[str, str]:
    """Store a new key with ``scopes``; return its headers."""
    raw = generate_key()
    await app.state.runtime.store.create_key(
        name="tests", scopes=scopes, key_hash=hash_key(raw), prefix=key_prefix(raw)
    )
    return {"Authorization": f"Bearer {raw}"}


def _ms(moment: str) -> int:
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp() * 1000)


async def build_world(client: Any, app: Any, settings: Any, auth: Any) -> World:
    """Create the keys and links and ingest :data:`EVENTS` (twice: no effect)."""
    scopes = ["links:read", "links:write", "analytics:read"]
    other = await make_key(app, scopes)
    admin = await make_key(app, ["admin"])
    links = {}
    for code, headers in (("alpha", auth), ("beta", auth), ("gamma", other)):
        body = {"url": f"https://example.com/{code}", "code": code}
        response = await client.post("/api/v1/links", json=body, headers=headers)
        assert response.status_code == 201, response.text
        links[code] = await app.state.runtime.store.get_link(code)

    clicks = [
        Click(
            links[code].id, code, _ms(at), ip=f"203.0.113.{n}", user_agent=agent,
            country=country, referrer=referrer,
        )
        for n, (code, at, agent, country, referrer) in enumerate(EVENTS)
    ]  # fmt: skip
    # Entry ids of one second make one block: one insert, not one per click.
    entries = [(f"1741478400000-{n}", [c]) for n, c in enumerate(clicks)]
    store = analytics.acquire(settings)
    try:
        sink = IngestSink(store)
        await sink.write("s", entries)
        await sink.write("s", entries)
    finally:
        analytics.release(store)
    return World(auth, other, admin, links)
