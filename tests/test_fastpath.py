"""Test the cached redirect path: it answers exactly as the full app does."""

from __future__ import annotations

from typing import Any

import pytest

from boltlink.clicks import decode_entry, stream_names
from boltlink.web.fastpath import RedirectApp

pytestmark = pytest.mark.redis

_BROWSER = {
    "User-Agent": "Mozilla/5.0 fastpath",
    "Referer": "https://ref.example/page",
    "Accept-Language": "de-CH,de;q=0.9",
}


async def _link(client: Any, auth: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("url", "https://www.python.org/?q=1")
    response = await client.post("/api/v1/links", json=body, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def _recorded(redis_client: Any, settings: Any) -> list[Any]:
    clicks = []
    for stream in stream_names(settings.redis_prefix, settings.stream_partitions):
        for _, fields in await redis_client.xrange(stream):
            clicks += decode_entry(fields)
    return clicks


async def _until_held(client: Any, app: Any, method: str, path: str) -> Any:
    # The first answer fills the local cache, unless a change announcement
    # (the listener subscribing at start) arrived meanwhile; then another does.
    first = await client.request(method, path)
    if app.state.runtime.resolver.cached(path[1:]) is None:
        await client.request(method, path)
    assert app.state.runtime.resolver.cached(path[1:]) is not None
    return first


def test_fastpath_app_is_the_served_app(app: Any) -> None:
    assert isinstance(app, RedirectApp)


async def test_fastpath_cached_redirect_answers_like_the_first(
    client: Any, auth: Any, app: Any
) -> None:
    link = await _link(client, auth, redirect_status=307)

    first = await _until_held(client, app, "GET", f"/{link['code']}")
    second = await client.get(f"/{link['code']}")

    assert second.status_code == first.status_code == 307
    assert second.headers.multi_items() == first.headers.multi_items()
    assert second.content == first.content == b""


async def test_fastpath_cached_redirect_records_the_same_click(
    client: Any, auth: Any, app: Any, redis_client: Any, settings: Any
) -> None:
    link = await _link(client, auth)

    await client.get(f"/{link['code']}", headers=_BROWSER)
    await client.get(f"/{link['code']}", headers=_BROWSER)

    first, second = await _recorded(redis_client, settings)
    assert (second.link_id, second.code, second.ip) == (
        first.link_id,
        link["code"],
        "198.51.100.7",
    )
    assert (second.user_agent, second.referrer, second.accept_language) == (
        "Mozilla/5.0 fastpath",
        "https://ref.example/page",
        "de-CH,de;q=0.9",
    )
    assert (first.user_agent, first.referrer, first.accept_language) == (
        second.user_agent,
        second.referrer,
        second.accept_language,
    )


async def test_fastpath_cached_head_records_no_click(
    client: Any, auth: Any, app: Any, redis_client: Any, settings: Any
) -> None:
    link = await _link(client, auth)
    await _until_held(client, app, "HEAD", f"/{link['code']}")

    response = await client.head(f"/{link['code']}")

    assert response.status_code == 302
    assert response.headers["location"] == "https://www.python.org/?q=1"
    assert await _recorded(redis_client, settings) == []


async def test_fastpath_cached_unknown_code_answers_the_same_problem(
    client: Any, app: Any
) -> None:
    first = await _until_held(client, app, "GET", "/NoSuch1")
    second = await client.get("/NoSuch1")

    assert second.status_code == first.status_code == 404
    assert second.headers.multi_items() == first.headers.multi_items()
    assert second.json() == first.json()
    assert second.json()["code"] == "not_found"


async def test_fastpath_cached_deleted_link_answers_the_same_problem(
    client: Any, auth: Any, app: Any
) -> None:
    link = await _link(client, auth)
    deleted = await client.delete(f"/api/v1/links/{link['code']}", headers=auth)
    assert deleted.status_code == 204

    first = await _until_held(client, app, "GET", f"/{link['code']}")
    second = await client.get(f"/{link['code']}")

    assert second.status_code == first.status_code == 410
    assert second.json() == first.json()
    assert second.json()["code"] == "gone"


async def test_fastpath_routes_still_answer_beside_cached_codes(
    client: Any, auth: Any, app: Any
) -> None:
    link = await _link(client, auth)
    await client.get(f"/{link['code']}")

    health = await client.get("/health")
    listed = await client.get("/api/v1/links", headers=auth)

    assert health.status_code == 200
    assert listed.json()["items"][0]["code"] == link["code"]


async def test_fastpath_change_through_api_is_seen_at_once(
    client: Any, auth: Any, app: Any
) -> None:
    link = await _link(client, auth, code="moving")
    await _until_held(client, app, "GET", "/moving")

    changed = await client.patch(
        "/api/v1/links/moving", json={"url": "https://example.org/new"}, headers=auth
    )
    assert changed.status_code == 200

    response = await client.get(f"/{link['code']}")
    assert response.headers["location"] == "https://example.org/new"
