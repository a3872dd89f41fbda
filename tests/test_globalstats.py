"""Test grouped counts across links: sources, filters, paging and errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.analytics_data import RANGE, World, build_world, make_key

pytestmark = pytest.mark.redis

URL = "/api/v1/analytics/global"


@pytest.fixture
async def world(client: Any, app: Any, settings: Any, auth: Any) -> World:
    """Create the keys, links and clicks of :mod:`tests.analytics_data`."""
    return await build_world(client, app, settings, auth)


async def _global(client: Any, headers: Any, **params: Any) -> Any:
    response = await client.get(URL, params={**RANGE, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _counts(body: Any) -> list[tuple[Any, int]]:
    return [(group["key"], group["clicks"]) for group in body["groups"]]


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ("country", [("US", 4), ("DE", 2), ("FR", 2)]),
        ("browser", [("Chrome", 4), ("Firefox", 2), ("Mobile Safari", 2)]),
        ("os", [("Windows", 4), ("Linux", 2), ("iOS", 2)]),
        ("device", [("desktop", 6), ("mobile", 2)]),
        ("referrer", [("", 5), ("news.ycombinator.com", 3)]),
        ("link", [("alpha", 5), ("beta", 3)]),
        ("day", [("2025-03-09", 5), ("2025-03-10", 3)]),
    ],
)
async def test_global_groups_the_keys_clicks(
    client: Any, world: World, group_by: str, expected: list[Any]
) -> None:
    body = await _global(client, world.auth, group_by=group_by)

    assert _counts(body) == expected
    assert body["next_cursor"] is None
    assert body["group_by"] == group_by


async def test_global_splits_human_and_bot(client: Any, world: World) -> None:
    body = await _global(client, world.auth, group_by="country")

    assert body["groups"][0] == {"key": "US", "clicks": 4, "human": 4, "bot": 1}
    only = await _global(client, world.auth, group_by="country", bots="only")
    assert _counts(only) == [("", 1), ("US", 1)]
    both = await _global(client, world.auth, group_by="device", bots="include")
    assert _counts(both) == [("desktop", 6), ("bot", 2), ("mobile", 2)]


async def test_global_admin_sees_every_link(client: Any, world: World) -> None:
    body = await _global(client, world.admin, group_by="link")
    other = await _global(client, world.other, group_by="country")

    assert _counts(body) == [("alpha", 5), ("gamma", 4), ("beta", 3)]
    assert _counts(other) == [("US", 4)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # A filter on the grouped dimension still reads the dimension rollup.
        ({"group_by": "country", "country": ["us", "FR"]}, [("US", 4), ("FR", 2)]),
        # A filter on another dimension reads the raw table.
        ({"group_by": "browser", "country": "US"}, [("Chrome", 4)]),
        ({"group_by": "link", "device": "mobile"}, [("alpha", 2)]),
        (
            {"group_by": "day", "browser": "Chrome"},
            [("2025-03-09", 3), ("2025-03-10", 1)],
        ),
        ({"group_by": "os", "link": "beta"}, [("Linux", 2), ("Windows", 1)]),
        ({"group_by": "country", "code": "alpha", "os": "iOS"}, [("FR", 2)]),
        ({"group_by": "country", "country": ""}, []),
        ({"group_by": "country", "country": "", "bots": "only"}, [("", 1)]),
    ],
)
async def test_global_filters(
    client: Any, world: World, params: dict[str, Any], expected: list[Any]
) -> None:
    body = await _global(client, world.auth, **params)

    assert _counts(body) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"tz": "UTC"}, [("2025-03-09", 5), ("2025-03-10", 3)]),
        (
            {"tz": "America/New_York", "from": "2025-03-08", "to": "2025-03-11"},
            [("2025-03-08", 3), ("2025-03-09", 4), ("2025-03-10", 1)],
        ),
        ({"tz": "Asia/Kolkata"}, [("2025-03-09", 5), ("2025-03-10", 3)]),
    ],
)
async def test_global_days_in_each_zone(
    client: Any, world: World, params: dict[str, str], expected: list[Any]
) -> None:
    body = await _global(client, world.auth, group_by="day", **params)

    assert _counts(body) == expected


@pytest.mark.parametrize("group_by", ["country", "link", "day"])
async def test_global_pages_in_a_stable_order(
    client: Any, world: World, group_by: str
) -> None:
    whole = await _global(client, world.admin, group_by=group_by)
    pages, cursor = [], None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        page = await _global(client, world.admin, group_by=group_by, limit=1, **extra)
        pages += page["groups"]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == whole["groups"]
    assert len(pages) == len({group["key"] for group in pages}) > 1


async def test_global_unknown_or_foreign_link_is_404(client: Any, world: World) -> None:
    foreign = await client.get(URL, params={"link": "gamma"}, headers=world.auth)
    unknown = await client.get(URL, params={"link": "nope"}, headers=world.admin)

    assert (foreign.status_code, foreign.json()["code"]) == (404, "not_found")
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "city"}, "group_by"),
        ({"group_by": "country", "city": "Paris"}, "city"),
        ({"country": "USA"}, "country"),
        ({"device": "fridge"}, "device"),
        ({"browser": "x" * 300}, "browser"),
        ({"os": ["Linux"] * 51}, "os"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "WyJhYmMiLDEsMl0"}, "cursor"),
        ({"bots": "none"}, "bots"),
        ({"tz": "Nowhere/City"}, "tz"),
        ({"from": "2025-03-10", "to": "2025-03-10"}, "from"),
        ({"from": "2010-01-01", "to": "2025-01-01"}, "from"),
        ({"from": "1969-12-31", "to": "1970-01-02"}, "from"),
        ({"from": "2025-01-01", "to": "9999-12-31T23:59:59-05:00"}, "to"),
        ({"from": "2025-01-01", "to": "2300-01-01"}, "to"),
        ({"from": "2025-03-09T25:00"}, "from"),
    ],
)
async def test_global_bad_parameters_get_problem_document(
    client: Any, auth: Any, params: dict[str, Any], field: str
) -> None:
    response = await client.get(URL, params=params, headers=auth)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == field


async def test_global_cursor_of_another_grouping_is_refused(
    client: Any, world: World
) -> None:
    first = await _global(client, world.admin, group_by="country", limit=1)
    params = {**RANGE, "group_by": "browser", "cursor": first["next_cursor"]}
    response = await client.get(URL, params=params, headers=world.admin)

    assert response.status_code == 422
    assert response.json()["field"] == "cursor"


async def test_global_needs_analytics_scope(client: Any, app: Any) -> None:
    links_only = await make_key(app, ["links:read", "links:write"])
    response = await client.get(URL, headers=links_only)

    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
