"""Test the links API on both link-store backends, with real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from boltlink.codes import ALPHABET

pytestmark = pytest.mark.redis


async def _create(client: Any, auth: dict[str, str], **body: Any) -> Any:
    return await client.post("/api/v1/links", json=body, headers=auth)


async def test_create_link_returns_its_representation(client: Any, auth: Any) -> None:
    response = await _create(client, auth, url="https://www.python.org/")

    assert response.status_code == 201
    body = response.json()
    assert body["url"] == "https://www.python.org/"
    assert len(body["code"]) == 7 and set(body["code"]) <= set(ALPHABET)
    assert body["short_url"] == f"https://bl.test/{body['code']}"
    assert body["clicks"] == 0
    assert body["redirect_status"] == 302
    assert body["tags"] == [] and body["title"] is None
    assert body["created_at"].endswith("Z")


async def test_create_link_keeps_every_field(client: Any, auth: Any) -> None:
    expires = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    response = await _create(
        client,
        auth,
        url="https://example.com/a",
        code="My-Code_1",
        title="Launch",
        tags=["b", "a", "b"],
        expires_at=expires.isoformat(),
        redirect_status=308,
    )

    assert response.status_code == 201
    body = response.json()
    assert body["code"] == "My-Code_1"
    assert body["title"] == "Launch"
    assert body["tags"] == ["a", "b"]
    assert body["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert body["redirect_status"] == 308


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a%2Fb?x=1+2&y=%20z#frag",
        "https://example.com/?",
        "http://example.com:8080/path;p?q=%E2%9C%93#",
    ],
)
async def test_create_link_round_trips_url_byte_for_byte(
    client: Any, auth: Any, url: str
) -> None:
    response = await _create(client, auth, url=url)

    assert response.status_code == 201
    assert response.json()["url"] == url
    location = await client.get(f"/{response.json()['code']}")
    assert location.headers["location"] == url


async def test_create_link_stores_idn_host_as_punycode(client: Any, auth: Any) -> None:
    response = await _create(client, auth, url="https://bücher.example/x")

    assert response.status_code == 201
    assert response.json()["url"] == "https://xn--bcher-kva.example/x"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"url": "ftp://example.com/file"}, 422, "invalid_url"),
        ({"url": "javascript:alert(1)"}, 422, "invalid_url"),
        ({"url": "/relative/path"}, 422, "invalid_url"),
        ({"url": "https://example.com/a\r\nSet-Cookie: x=1"}, 422, "invalid_url"),
        ({"url": "https://example.com/\x00"}, 422, "invalid_url"),
        ({"url": "https://example.com/\tx"}, 422, "invalid_url"),
        ({"url": "https://BL.test./loop"}, 422, "invalid_url"),
        ({"url": "https://bl.test:8443/loop"}, 422, "invalid_url"),
        ({"url": "https://example.com/" + "a" * 9000}, 422, "invalid_url"),
        ({"url": 42}, 422, "invalid_url"),
        ({}, 422, "validation_error"),
        ({"url": "https://example.com", "code": "api"}, 422, "reserved_code"),
        ({"url": "https://example.com", "code": "API"}, 422, "reserved_code"),
        ({"url": "https://example.com", "code": "Health"}, 422, "reserved_code"),
        ({"url": "https://example.com", "code": "robots.txt"}, 422, "reserved_code"),
        ({"url": "https://example.com", "code": "favicon.ico"}, 422, "reserved_code"),
        ({"url": "https://example.com", "code": ".well-known"}, 422, "reserved_code"),
        ({"url": "https://example.com", "code": "a b"}, 422, "invalid_code"),
        ({"url": "https://example.com", "code": "x" * 65}, 422, "invalid_code"),
        ({"url": "https://example.com", "redirect_status": 303}, 422, "validation_error"),
        ({"url": "https://example.com", "redirect_status": "302"}, 422, "validation_error"),
        ({"url": "https://example.com", "tags": "a"}, 422, "validation_error"),
        ({"url": "https://example.com", "title": 5}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "2020-01-01T00:00:00Z"}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "2999-01-01T00:00:00"}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "soon"}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "9999-12-31T23:59:59-23:59"}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "20990101T000000Z"}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "2099-W01-1T00:00Z"}, 422, "validation_error"),
        ({"url": "https://example.com", "expires_at": "2099-01-01T00:00:00Z\u0000"}, 422, "validation_error"),
        ({"url": "https://example.com", "title": "a\u0085b"}, 422, "validation_error"),
        ({"url": "https://example.com", "expire_at": None}, 422, "validation_error"),
    ],
)  # fmt: skip
async def test_create_link_refuses_bad_input(
    client: Any, auth: Any, body: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post("/api/v1/links", json=body, headers=auth)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"url": "https://example.com", "title": "' + b"x" * 70000 + b'"}', 413, "payload_too_large"),
    ],
)  # fmt: skip
async def test_create_link_refuses_malformed_body(
    client: Any, auth: Any, raw: bytes, status: int, code: str
) -> None:
    response = await client.post("/api/v1/links", content=raw, headers=auth)

    assert response.status_code == status
    assert response.json()["code"] == code


async def test_create_link_duplicate_code_conflicts(client: Any, auth: Any) -> None:
    first = await _create(client, auth, url="https://example.com/1", code="dup")
    second = await _create(client, auth, url="https://example.com/2", code="dup")
    other_case = await _create(client, auth, url="https://example.com/3", code="DUP")

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["code"] == "code_taken"
    assert other_case.status_code == 201


async def test_create_link_same_code_in_parallel_one_wins(
    client: Any, auth: Any
) -> None:
    responses = await asyncio.gather(
        *(
            _create(client, auth, url=f"https://example.com/{n}", code="race")
            for n in range(20)
        )
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {
        "code_taken"
    }


async def test_auth_missing_key_is_unauthorized(client: Any) -> None:
    response = await client.get("/api/v1/links")

    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


async def test_auth_unknown_key_is_unauthorized(client: Any) -> None:
    response = await client.get(
        "/api/v1/links", headers={"Authorization": "Bearer blk_nope"}
    )

    assert response.status_code == 401


@pytest.mark.parametrize("name", ["api_key", "TOKEN", "Api_Key", "access_token"])
async def test_auth_key_in_query_string_is_refused(
    client: Any, api_key: str, name: str
) -> None:
    response = await client.get(f"/api/v1/links?{name}={api_key}")

    assert response.status_code == 401
    assert response.json()["detail"] == (
        "api keys are accepted only in the Authorization or X-Api-Key header"
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer wrong"), ("authorization", "Bearer {key}")],
        [("authorization", "Bearer {key}"), ("x-api-key", "{key}")],
    ],
)
async def test_auth_two_credentials_are_refused(
    client: Any, api_key: str, headers: list[tuple[str, str]]
) -> None:
    sent = [(name, value.format(key=api_key)) for name, value in headers]

    response = await client.get("/api/v1/links", headers=sent)

    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize("path", ["/abc/", "/api/v1/links/", "/api/v1/links/abc/"])
async def test_trailing_slash_is_not_found_never_redirected(
    client: Any, auth: Any, path: str
) -> None:
    await client.post(
        "/api/v1/links", json={"url": "https://e.com/", "code": "abc"}, headers=auth
    )

    response = await client.get(path, headers={**auth, "host": "evil.example"})

    assert response.status_code == 404
    assert "location" not in response.headers


async def test_auth_x_api_key_header_is_accepted(client: Any, api_key: str) -> None:
    response = await client.get("/api/v1/links", headers={"X-Api-Key": api_key})

    assert response.status_code == 200


async def test_auth_missing_scope_is_forbidden(client: Any, app: Any) -> None:
    from boltlink.apikeys import generate_key, hash_key, key_prefix

    raw = generate_key()
    store = app.state.runtime.store
    await store.create_key(
        name="ro", scopes=["links:read"], key_hash=hash_key(raw), prefix=key_prefix(raw)
    )

    response = await _create(
        client, {"Authorization": f"Bearer {raw}"}, url="https://example.com"
    )

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


async def test_auth_revoked_key_is_unauthorized(client: Any, app: Any) -> None:
    from boltlink.apikeys import generate_key, hash_key, key_prefix

    raw = generate_key()
    store = app.state.runtime.store
    key = await store.create_key(
        name="old", scopes=["admin"], key_hash=hash_key(raw), prefix=key_prefix(raw)
    )
    await store.revoke_key(key.id)

    response = await client.get(
        "/api/v1/links", headers={"Authorization": f"Bearer {raw}"}
    )

    assert response.status_code == 401


async def test_get_link_unknown_is_not_found(client: Any, auth: Any) -> None:
    response = await client.get("/api/v1/links/nope", headers=auth)

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_list_links_pages_cover_every_link_once(client: Any, auth: Any) -> None:
    created = [
        (await _create(client, auth, url=f"https://example.com/{n}")).json()["code"]
        for n in range(7)
    ]

    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/api/v1/links{query}", headers=auth)).json()
        seen += [item["code"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(created))


async def test_list_links_filters_by_tag(client: Any, auth: Any) -> None:
    await _create(client, auth, url="https://example.com/1", code="t1", tags=["x"])
    await _create(client, auth, url="https://example.com/2", code="t2", tags=["y"])
    await _create(client, auth, url="https://example.com/3", code="t3", tags=["x", "y"])

    page = (await client.get("/api/v1/links?tag=x", headers=auth)).json()

    assert [item["code"] for item in page["items"]] == ["t3", "t1"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        # int() reads these; a limit is ASCII digits only.
        ("limit=%201", "limit"),
        ("limit=%2B5", "limit"),
        ("limit=1_0", "limit"),
        ("limit=%D9%A3", "limit"),
        ("cursor=%%%", "cursor"),
        # Forged cursors: past the 64-bit id range, zero, signed, empty.
        ("cursor=aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "cursor"),
        ("cursor=aWQ6OTIyMzM3MjAzNjg1NDc3NTgwOA", "cursor"),
        ("cursor=aWQ6MA", "cursor"),
        ("cursor=aWQ6LTU", "cursor"),
        ("cursor=aWQ6KzU", "cursor"),
        ("cursor=aWQ6", "cursor"),
        ("tag=%00", "tag"),
        ("tag=a%0Ab", "tag"),
        ("tag=" + "x" * 65, "tag"),
    ],
)
async def test_list_links_refuses_bad_paging(
    client: Any, auth: Any, query: str, field: str
) -> None:
    response = await client.get(f"/api/v1/links?{query}", headers=auth)

    assert response.status_code == 422
    assert response.json()["field"] == field


async def test_update_link_changes_destination_at_once(client: Any, auth: Any) -> None:
    await _create(client, auth, url="https://example.com/old", code="moving")
    assert (await client.get("/moving")).headers[
        "location"
    ] == "https://example.com/old"

    response = await client.patch(
        "/api/v1/links/moving",
        json={"url": "https://example.com/new", "tags": ["z"]},
        headers=auth,
    )

    assert response.status_code == 200
    assert response.json()["url"] == "https://example.com/new"
    assert response.json()["tags"] == ["z"]
    assert (await client.get("/moving")).headers[
        "location"
    ] == "https://example.com/new"


async def test_update_link_refuses_code_change(client: Any, auth: Any) -> None:
    await _create(client, auth, url="https://example.com/", code="fixed")

    response = await client.patch(
        "/api/v1/links/fixed", json={"code": "other"}, headers=auth
    )

    assert response.status_code == 422
    assert response.json()["field"] == "code"


async def test_delete_link_then_redirect_is_gone(client: Any, auth: Any) -> None:
    await _create(client, auth, url="https://example.com/", code="bye")
    assert (await client.get("/bye")).status_code == 302

    deleted = await client.delete("/api/v1/links/bye", headers=auth)

    assert deleted.status_code == 204
    gone = await client.get("/bye")
    assert gone.status_code == 410
    assert gone.json()["code"] == "gone"
    assert (await client.get("/api/v1/links/bye", headers=auth)).status_code == 410
    again = await _create(client, auth, url="https://example.com/", code="bye")
    assert again.status_code == 409


async def test_unknown_api_route_is_a_problem(client: Any, auth: Any) -> None:
    response = await client.get("/api/v1/nothing/here", headers=auth)

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_wrong_method_is_a_problem(client: Any, auth: Any) -> None:
    response = await client.put("/api/v1/links", headers=auth)

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_auth_header_without_bearer_says_so(client: Any, api_key: str) -> None:
    response = await client.get("/api/v1/links", headers={"Authorization": api_key})

    assert response.status_code == 401
    assert response.json()["detail"] == "authorization header must read 'Bearer <key>'"


_MISSING = "missing api key: send Authorization: Bearer <key>"
_NOT_BEARER = "authorization header must read 'Bearer <key>'"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"Authorization": ""}, _MISSING),
        ({"X-Api-Key": ""}, _MISSING),
        ({"Authorization": "Bearer "}, _NOT_BEARER),
        ({"Authorization": "Bearer    "}, _NOT_BEARER),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, _NOT_BEARER),
        ({"Authorization": "Bearer blk_nope"}, "unknown or revoked api key"),
        ({"X-Api-Key": "blk_nope"}, "unknown or revoked api key"),
    ],
)
async def test_auth_header_faults_name_the_fault(
    client: Any, headers: dict[str, str], detail: str
) -> None:
    response = await client.get("/api/v1/links", headers=headers)

    assert response.status_code == 401
    assert response.json()["detail"] == detail


async def test_auth_bearer_scheme_in_any_case_is_accepted(
    client: Any, api_key: str
) -> None:
    response = await client.get(
        "/api/v1/links", headers={"Authorization": f"bEaReR   {api_key} "}
    )

    assert response.status_code == 200


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("code", ["a%00b", "a%0Ab", "caf%C3%A9", "x" * 65, "a.b"])
async def test_link_routes_treat_odd_codes_as_not_found(
    client: Any, auth: Any, method: str, code: str
) -> None:
    response = await client.request(
        method, f"/api/v1/links/{code}", json={"title": "t"}, headers=auth
    )

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"],
)
async def test_create_link_refuses_body_that_is_not_json(
    client: Any, auth: Any, content_type: str
) -> None:
    response = await client.post(
        "/api/v1/links",
        content=b'{"url": "https://example.com/"}',
        headers={**auth, "content-type": content_type},
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    listing = await client.get("/api/v1/links", headers=auth)
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json; charset=utf-8", "application/merge-patch+json"],
)
async def test_create_link_accepts_json_or_untyped_body(
    client: Any, auth: Any, content_type: str | None
) -> None:
    headers = (
        dict(auth) if content_type is None else {**auth, "content-type": content_type}
    )

    response = await client.post(
        "/api/v1/links", content=b'{"url": "https://example.com/"}', headers=headers
    )

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"null", "body must be a JSON object, got null"),
        (b"true", "body must be a JSON object, got a boolean"),
        (b'"x"', "body must be a JSON object, got a string"),
        (b"[1]", "body must be a JSON object, got an array"),
        (b"12", "body must be a JSON object, got a number"),
    ],
)
async def test_create_link_names_json_types_in_json_terms(
    client: Any, auth: Any, raw: bytes, detail: str
) -> None:
    response = await client.post("/api/v1/links", content=raw, headers=auth)

    assert response.status_code == 400
    assert response.json()["detail"] == detail


async def test_create_link_stops_reading_chunked_body_over_limit(
    client: Any, auth: Any
) -> None:
    async def chunks() -> Any:
        yield b'{"url": "https://example.com/", "title": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post("/api/v1/links", content=chunks(), headers=auth)

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def _api_count(status: str, method: str = "POST") -> float:
    from prometheus_client import REGISTRY

    from boltlink import metrics

    metrics.flush()
    labels = {"route": "/api/v1/links", "method": method, "status": status}
    return REGISTRY.get_sample_value("boltlink_api_requests_total", labels) or 0.0


async def test_create_route_is_counted_under_its_template(
    client: Any, auth: Any
) -> None:
    before = [_api_count("201"), _api_count("409"), _api_count("422")]

    await _create(client, auth, url="https://example.com/", code="counted")
    await _create(client, auth, url="https://example.com/", code="counted")
    await _create(client, auth, url="ftp://example.com/")

    after = [_api_count("201"), _api_count("409"), _api_count("422")]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("method", "status"), [("PUT", 405), ("GET", 200), ("HEAD", 200)]
)
async def test_links_path_other_methods_take_the_api_router(
    client: Any, auth: Any, method: str, status: int
) -> None:
    response = await client.request(method, "/api/v1/links", headers=auth)

    assert response.status_code == status
