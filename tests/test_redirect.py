"""Test redirects: status, headers, click recording and the cache layers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from boltlink.clicks import decode_entry, stream_names

pytestmark = pytest.mark.redis


async def _link(client: Any, auth: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("url", "https://www.python.org/")
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


async def test_redirect_get_answers_302_with_location(client: Any, auth: Any) -> None:
    link = await _link(client, auth)

    response = await client.get(f"/{link['code']}")

    assert response.status_code == 302
    assert response.headers["location"] == "https://www.python.org/"
    assert response.headers["cache-control"] == "private, no-store, max-age=0"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_uses_link_status(client: Any, auth: Any, status: int) -> None:
    link = await _link(client, auth, redirect_status=status)

    response = await client.get(f"/{link['code']}")

    assert response.status_code == status


async def test_redirect_get_records_one_click(
    client: Any, auth: Any, redis_client: Any, settings: Any
) -> None:
    link = await _link(client, auth)

    await client.get(
        f"/{link['code']}",
        headers={"User-Agent": "Mozilla/5.0 test", "Referer": "https://ref.example/"},
    )

    clicks = await _recorded(redis_client, settings)
    assert len(clicks) == 1
    assert clicks[0].code == link["code"]
    assert clicks[0].user_agent == "Mozilla/5.0 test"
    assert clicks[0].referrer == "https://ref.example/"
    assert clicks[0].ip == "198.51.100.7"


async def test_redirect_head_is_not_a_click(
    client: Any, auth: Any, redis_client: Any, settings: Any
) -> None:
    link = await _link(client, auth)

    response = await client.head(f"/{link['code']}")

    assert response.status_code == 302
    assert response.headers["location"] == "https://www.python.org/"
    assert await _recorded(redis_client, settings) == []


@pytest.mark.parametrize(
    "purpose",
    [
        ("sec-purpose", "prefetch"),
        ("sec-purpose", "prefetch;prerender"),
        ("sec-purpose", "Prefetch; anonymous-client-ip"),
        ("purpose", "prefetch"),
        ("x-purpose", "preview"),
        ("x-moz", "prefetch"),
    ],
)
async def test_redirect_prefetch_is_answered_but_not_a_click(
    client: Any, auth: Any, redis_client: Any, settings: Any, purpose: Any
) -> None:
    link = await _link(client, auth)
    path = f"/{link['code']}"

    # The first request takes the full path, the second the cached one.
    first = await client.get(path, headers=dict([purpose]))
    second = await client.get(path, headers=dict([purpose]))
    plain = await client.get(path, headers={"User-Agent": "Mozilla/5.0 test"})

    for response in (first, second, plain):
        assert response.status_code == 302
        assert response.headers["location"] == "https://www.python.org/"
    clicks = await _recorded(redis_client, settings)
    assert [click.user_agent for click in clicks] == ["Mozilla/5.0 test"]


async def test_redirect_unknown_code_is_not_found(client: Any) -> None:
    response = await client.get("/Nope123")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_redirect_odd_path_is_not_found(client: Any) -> None:
    response = await client.get("/%00%0d%0a")

    assert response.status_code == 404


async def test_redirect_unknown_code_reaches_store_once(
    client: Any, app: Any, redis_client: Any, settings: Any
) -> None:
    from boltlink.web.resolver import CACHE_LOOKUPS

    before = CACHE_LOOKUPS.labels("store")._value.get()
    for _ in range(20):
        assert (await client.get("/Missing1")).status_code == 404
    app.state.runtime.resolver.forget()
    assert (await client.get("/Missing1")).status_code == 404

    assert CACHE_LOOKUPS.labels("store")._value.get() - before == 1
    raw = await redis_client.get(f"{settings.redis_prefix}link:Missing1")
    assert raw == b"-"


async def test_redirect_create_clears_cached_miss(client: Any, auth: Any) -> None:
    assert (await client.get("/later")).status_code == 404

    await _link(client, auth, code="later")

    assert (await client.get("/later")).status_code == 302


async def test_redirect_expired_link_is_gone(client: Any, auth: Any, app: Any) -> None:
    link = await _link(client, auth, code="brief")
    store = app.state.runtime.store
    past = datetime.now(UTC) - timedelta(seconds=1)
    updated = await store.update_link("brief", {"expires_at": past})
    await app.state.runtime.resolver.publish_link("brief", updated)

    response = await client.get(f"/{link['code']}")

    assert response.status_code == 410
    assert response.json()["code"] == "gone"


async def test_health_and_ready_answer_ok(client: Any) -> None:
    health = await client.get("/health")
    ready = await client.get("/ready")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "store": "ok",
        "redis": "ok",
        "clickhouse": "embedded",
    }


def test_reserved_codes_cover_every_routed_segment(app: Any) -> None:
    from boltlink.codes import is_reserved

    segments = {
        route.path.strip("/").split("/")[0]
        for route in app.routes
        if not route.path.startswith("/{")
    }

    assert segments == {"health", "ready", "metrics", "api"}
    assert all(is_reserved(segment) for segment in segments)
