"""Test edges of the HTTP surface: odd but possible input, one case each.

Punycode and control characters in destinations, cursors and limits in
other scripts' digits, time zones ClickHouse cannot load, browser
prefetches, an IPv6 listen address, the Allow header of a 405, content
codings, and a client that hangs up in the middle of its body.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from typing import Any

import orjson
import pytest

from boltlink.analytics import AnalyticsStore
from boltlink.backends import connect_clickhouse
from boltlink.workers.run import run_role

pytestmark = pytest.mark.redis

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


async def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "url", ["https://xn--a.example/", "https://xn--/", "https://xn--zz-.example/"]
)
async def test_destination_with_invalid_punycode_label_is_refused(
    client: Any, auth: Any, url: str
) -> None:
    response = await client.post("/api/v1/links", json={"url": url}, headers=auth)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_url"
    assert response.json()["field"] == "url"
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        # A zero-width non-joiner (Persian) and joiner (Sinhala), both
        # allowed by IDNA 2008, spelt in Unicode and as punycode.
        (
            "https://\u0646\u0627\u0645\u0647\u200c\u0627\u06cc.ir/",
            "https://xn--mgba3gch31f060k.ir/",
        ),
        ("https://xn--mgba3gch31f060k.ir/", "https://xn--mgba3gch31f060k.ir/"),
        ("https://xn--10cl1a0b660p.lk/", "https://xn--10cl1a0b660p.lk/"),
        # An emoji newer than some Pythons' Unicode tables.
        ("https://xn--929h.ws/", "https://xn--929h.ws/"),
    ],
)
async def test_destination_with_a_valid_idn_is_stored(
    client: Any, auth: Any, url: str, stored: str
) -> None:
    response = await client.post("/api/v1/links", json={"url": url}, headers=auth)

    assert response.status_code == 201
    assert response.json()["url"] == stored


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("id:\u0663"),  # ARABIC-INDIC DIGIT THREE: int() reads 3
        _cursor("id:\u0661\u0660"),  # "10" in Arabic-Indic digits
        _cursor("id:\uff17"),  # FULLWIDTH DIGIT SEVEN
    ],
)
async def test_list_links_refuses_cursor_it_did_not_hand_out(
    client: Any, auth: Any, cursor: str
) -> None:
    response = await client.get(
        "/api/v1/links", params={"cursor": cursor}, headers=auth
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == "cursor"


@pytest.mark.parametrize("tz", ["right/UTC", "right/Europe/Paris"])
@pytest.mark.parametrize("route", ["link-stats", "global-by-day"])
async def test_stats_zone_clickhouse_cannot_load_is_a_validation_error(
    client: Any, auth: Any, tz: str, route: str
) -> None:
    # Python loads these where the system has them; ClickHouse never does.
    created = await client.post(
        "/api/v1/links", json={"url": "https://example.com/tz"}, headers=auth
    )
    code = created.json()["code"]
    if route == "link-stats":
        path, params = f"/api/v1/links/{code}/stats", {"tz": tz}
    else:
        path, params = "/api/v1/analytics/global", {"tz": tz, "group_by": "day"}

    response = await client.get(path, params=params, headers=auth)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == "tz"


async def test_prefetch_is_never_a_human_click(
    client: Any, auth: Any, settings: Any, app: Any
) -> None:
    created = await client.post(
        "/api/v1/links", json={"url": "https://example.com/pf"}, headers=auth
    )
    code = created.json()["code"]
    sent = [
        {"user-agent": CHROME},
        {"user-agent": CHROME, "sec-purpose": "prefetch"},
        {"user-agent": CHROME, "sec-purpose": "prefetch;prerender"},
        {"user-agent": CHROME, "purpose": "prefetch"},
    ]
    for headers in sent:
        assert (await client.get(f"/{code}", headers=headers)).status_code == 302

    stop = asyncio.Event()
    role = asyncio.create_task(run_role("ingest", settings, stop))
    analytics = AnalyticsStore(connect_clickhouse(settings))
    analytics.migrate()
    link = await app.state.runtime.store.get_link(code)

    async def ingested() -> bool:
        # However a prefetch is kept (as a bot, or not at all), the one
        # real click must be there before the totals are read.
        return await analytics.count_clicks(link.id) >= 1

    try:
        await _wait_for(ingested)
        await asyncio.sleep(1.0)  # let the rest of the batch land
    finally:
        stop.set()
        await role
        analytics.close()

    response = await client.get(
        f"/api/v1/links/{code}/stats", params={"bots": "include"}, headers=auth
    )
    assert response.status_code == 200
    assert response.json()["totals"]["human"] == 1


@pytest.fixture
async def ipv6_client(
    store_dsn: tuple[str, str],
    redis_url: str,
    redis_prefix: str,
    redis_client: Any,
    tmp_path: Any,
) -> Any:
    """Yield a client of an app served on ``--host ::1`` with no public URL."""
    import httpx

    from boltlink import analytics
    from boltlink.apikeys import generate_key, hash_key, key_prefix
    from boltlink.asgi import create_app
    from boltlink.settings import Settings
    from boltlink.store import migrate

    dsn, schema = store_dsn
    settings = Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        database_url=dsn,
        database_schema=schema,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
        host="::1",
        port=8000,
        inprocess_workers=False,
    )
    migrate(settings.database_dsn, schema=settings.database_schema)
    held = analytics.acquire(settings)
    try:
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            raw = generate_key()
            await application.state.runtime.store.create_key(
                name="tests",
                scopes=["links:read", "links:write"],
                key_hash=hash_key(raw),
                prefix=key_prefix(raw),
            )
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://[::1]:8000",
                headers={"Authorization": f"Bearer {raw}"},
            ) as client:
                yield client
    finally:
        analytics.release(held)


async def test_ipv6_listen_address_gives_bracketed_short_urls_and_no_self_links(
    ipv6_client: Any,
) -> None:
    created = await ipv6_client.post(
        "/api/v1/links", json={"url": "https://example.com/", "code": "v6"}
    )
    loop = await ipv6_client.post("/api/v1/links", json={"url": "http://[::1]:8000/v6"})

    assert created.status_code == 201
    assert created.json()["short_url"] == "http://[::1]:8000/v6"
    assert loop.status_code == 422
    assert loop.json()["code"] == "invalid_url"


def _allowed(response: Any) -> set[str]:
    return {m.strip() for m in response.headers.get("allow", "").split(",")}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/v1/links", {"GET", "HEAD", "POST"}),
        ("DELETE", "/api/v1/links", {"GET", "HEAD", "POST"}),
        ("PUT", "/api/v1/links/abc", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("POST", "/api/v1/links/abc", {"GET", "HEAD", "PATCH", "DELETE"}),
    ],
)
async def test_method_not_allowed_names_every_allowed_method(
    client: Any, auth: Any, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path, headers=auth)

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert _allowed(response) == allowed


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(b'{"url": "https://example.com/gz"}')),
        ("br", b'{"url": "https://example.com/br"}'),
        ("deflate", b'{"url": "https://example.com/deflate"}'),
    ],
)
async def test_create_link_refuses_content_coding_it_does_not_decode(
    client: Any, auth: Any, coding: str, body: bytes
) -> None:
    response = await client.post(
        "/api/v1/links",
        content=body,
        headers={
            **auth,
            "content-type": "application/json",
            "content-encoding": coding,
        },
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a\u0085b",  # NEXT LINE
        "https://example.com/?q=\u009b31m",  # CONTROL SEQUENCE INTRODUCER
        "https://example.com/#\u0080",
    ],
)
async def test_destination_with_c1_control_character_is_refused(
    client: Any, auth: Any, url: str
) -> None:
    response = await client.post("/api/v1/links", json={"url": url}, headers=auth)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_url"
    assert response.json()["field"] == "url"
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


@pytest.mark.parametrize("after_link", [-5, -1])
async def test_global_cursor_with_negative_link_id_is_a_validation_error(
    client: Any, app: Any, settings: Any, auth: Any, after_link: int
) -> None:
    import orjson

    from tests.analytics_data import RANGE, build_world

    world = await build_world(client, app, settings, auth)
    params = {**RANGE, "group_by": "link", "limit": 1}
    first = await client.get(
        "/api/v1/analytics/global", params=params, headers=world.auth
    )
    cursor = first.json()["next_cursor"]
    position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    position[-1] = after_link
    forged = base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")

    response = await client.get(
        "/api/v1/analytics/global",
        params={**params, "cursor": forged},
        headers=world.auth,
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == "cursor"


def _create_count(status: str) -> float:
    from prometheus_client import REGISTRY

    from boltlink import metrics

    metrics.flush()
    labels = {"route": "/api/v1/links", "method": "POST", "status": status}
    return REGISTRY.get_sample_value("boltlink_api_requests_total", labels) or 0.0


def _create_scope(api_key: str) -> dict[str, Any]:
    # A create whose body is announced as 100 bytes.
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/api/v1/links",
        "raw_path": b"/api/v1/links",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bl.test"),
            (b"authorization", f"Bearer {api_key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
        ],
        "client": ("198.51.100.7", 40000),
        "server": ("bl.test", 443),
    }


#: The first part of a body whose rest never comes.
_PART = {"type": "http.request", "body": b'{"url": "https://exa', "more_body": True}


async def _serve(
    app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run one request through ``app``; return what it sent.

    ``messages`` are received in turn; after them the client is silent.
    """
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_client_gone_mid_body_is_not_a_server_error(
    app: Any, api_key: str
) -> None:
    before, gone = _create_count("500"), _create_count("499")

    sent = await _serve(
        app, _create_scope(api_key), [_PART, {"type": "http.disconnect"}]
    )

    assert _create_count("500") == before
    assert _create_count("499") == gone + 1
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert all(m["status"] < 500 for m in starts)


async def test_a_body_that_trickles_in_times_out_with_nothing_stored(
    app: Any, api_key: str, auth: Any, client: Any, monkeypatch: Any
) -> None:
    from boltlink.web import params

    monkeypatch.setattr(params, "BODY_SECONDS", 0.3)
    sent = await asyncio.wait_for(_serve(app, _create_scope(api_key), [_PART]), 10)

    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
    assert start["status"] == 408
    assert orjson.loads(body)["code"] == "request_timeout"
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"url": "https://good.example/", "url": "https://evil.example/"}',
        b'{"url": "https://good.example/", "\\u0075rl": "https://evil.example/"}',
        b'{"url": "https://good.example/", "title": "a", "title": "b"}',
        b'{"url": "https://good.example/", "tags": [], "\\u0074ags": ["x"]}',
        # Deeper than the standard library reads, within orjson's 1,024.
        b'{"url": "https://good.example/", "title": "\\u00e9", "x": '
        + b'{"x": ' * 1020
        + b"1"
        + b"}" * 1021,
    ],
)
async def test_create_link_refuses_a_body_that_repeats_a_key(
    client: Any, auth: Any, body: bytes
) -> None:
    response = await client.post(
        "/api/v1/links",
        content=body,
        headers={**auth, "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


async def test_create_link_takes_a_key_name_inside_a_value(
    client: Any, auth: Any
) -> None:
    body = (
        b'{"url": "https://e.example/?q=%22url%22", "title": "say \\"url\\" \\u00e9"}'
    )
    response = await client.post(
        "/api/v1/links",
        content=body,
        headers={**auth, "content-type": "application/json"},
    )

    assert response.status_code == 201
    assert response.json()["title"] == 'say "url" \u00e9'


async def test_method_not_allowed_lists_methods_under_a_root_path(app: Any) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/x/health",
        "raw_path": b"/x/health",
        "root_path": "/x",
        "query_string": b"",
        "headers": [(b"host", b"bl.test")],
        "client": ("198.51.100.7", 40000),
        "server": ("bl.test", 80),
    }
    empty = {"type": "http.request", "body": b"", "more_body": False}
    sent = await asyncio.wait_for(_serve(app, scope, [empty]), 10)

    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 405
    assert dict(start["headers"])[b"allow"] == b"GET, HEAD"


@pytest.mark.parametrize("tz", ["Europe/Paris", "posix/Europe/Paris", "UTC"])
async def test_stats_take_an_iana_zone_and_its_posix_copy(
    client: Any, auth: Any, tz: str
) -> None:
    created = await client.post(
        "/api/v1/links", json={"url": "https://example.com/tz"}, headers=auth
    )
    code = created.json()["code"]

    response = await client.get(
        f"/api/v1/links/{code}/stats", params={"tz": tz}, headers=auth
    )

    assert response.status_code == 200
    assert response.json()["tz"] == tz


@pytest.mark.parametrize(
    ("route", "param"),
    [("link-stats", "form"), ("link-stats", "group_by"), ("overview", "lnk")],
)
async def test_stats_refuse_a_parameter_they_do_not_read(
    client: Any, auth: Any, route: str, param: str
) -> None:
    created = await client.post(
        "/api/v1/links", json={"url": "https://example.com/p"}, headers=auth
    )
    code = created.json()["code"]
    path = (
        f"/api/v1/links/{code}/stats"
        if route == "link-stats"
        else "/api/v1/stats/overview"
    )

    response = await client.get(path, params={param: "2025-01-01"}, headers=auth)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == param
