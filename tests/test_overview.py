"""Test the overview: totals of a key's links and its busiest links, paged."""

from __future__ import annotations

from typing import Any

import pytest

from tests.analytics_data import RANGE, World, build_world, make_key

pytestmark = pytest.mark.redis


@pytest.fixture
async def world(client: Any, app: Any, settings: Any, auth: Any) -> World:
    """Create the keys, links and clicks of :mod:`tests.analytics_data`."""
    return await build_world(client, app, settings, auth)


async def _overview(client: Any, headers: Any, **params: str) -> Any:
    response = await client.get(
        "/api/v1/stats/overview", params={**RANGE, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def _ranking(body: Any) -> list[tuple[str, int]]:
    return [(link["code"], link["clicks"]) for link in body["links"]]


async def test_overview_counts_only_the_keys_links(client: Any, world: World) -> None:
    body = await _overview(client, world.auth)

    assert body["totals"] == {
        "clicks": 8, "human": 8, "bot": 2, "visitors": 8, "links": 2,
    }  # fmt: skip
    assert body["links"] == [
        {"code": "alpha", "clicks": 5, "human": 5, "bot": 1, "visitors": 5},
        {"code": "beta", "clicks": 3, "human": 3, "bot": 1, "visitors": 3},
    ]
    assert body["next_cursor"] is None
    assert (body["from"], body["to"], body["bots"]) == (
        "2025-03-09T00:00:00Z", "2025-03-11T00:00:00Z", "exclude",
    )  # fmt: skip


async def test_overview_of_another_key_and_of_admin(client: Any, world: World) -> None:
    other = await _overview(client, world.other)
    admin = await _overview(client, world.admin)

    assert _ranking(other) == [("gamma", 4)]
    assert other["totals"]["clicks"] == 4
    assert _ranking(admin) == [("alpha", 5), ("gamma", 4), ("beta", 3)]
    assert admin["totals"] == {
        "clicks": 12, "human": 12, "bot": 2, "visitors": 12, "links": 3,
    }  # fmt: skip


async def test_overview_key_without_links_is_empty(
    client: Any, app: Any, world: World
) -> None:
    empty = await make_key(app, ["analytics:read"])
    body = await _overview(client, empty)

    assert body["totals"] == {
        "clicks": 0,
        "human": 0,
        "bot": 0,
        "visitors": 0,
        "links": 0,
    }
    assert body["links"] == []


@pytest.mark.parametrize(
    ("bots", "clicks", "ranking"),
    [
        ("exclude", 8, [("alpha", 5), ("beta", 3)]),
        ("include", 10, [("alpha", 6), ("beta", 4)]),
        ("only", 2, [("alpha", 1), ("beta", 1)]),
    ],
)
async def test_overview_bot_filter(
    client: Any, world: World, bots: str, clicks: int, ranking: list[Any]
) -> None:
    body = await _overview(client, world.auth, bots=bots)

    assert body["totals"]["clicks"] == clicks
    assert (body["totals"]["human"], body["totals"]["bot"]) == (8, 2)
    assert _ranking(body) == ranking


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"from": "2025-03-09T00:00:00Z", "to": "2025-03-10T12:00:00Z"},
        {"from": "2025-03-09T00:30:00Z", "to": "2025-03-10T11:30:00Z"},
        {"tz": "Asia/Kolkata"},
    ],
)
async def test_overview_same_answer_from_each_source(
    client: Any, world: World, params: dict[str, str]
) -> None:
    # Whole days read clicks_daily, whole hours clicks_hourly, the rest raw.
    body = await _overview(client, world.admin, **{**RANGE, **params})

    assert _ranking(body) == [("alpha", 5), ("gamma", 4), ("beta", 3)]


async def test_overview_of_one_link_and_of_a_foreign_one(
    client: Any, world: World
) -> None:
    beta = await _overview(client, world.auth, link="beta")
    foreign = await client.get(
        "/api/v1/stats/overview", params={**RANGE, "link": "gamma"}, headers=world.auth
    )

    assert _ranking(beta) == [("beta", 3)]
    assert beta["totals"]["links"] == 1
    assert (foreign.status_code, foreign.json()["code"]) == (404, "not_found")


async def test_overview_pages_through_links(client: Any, world: World) -> None:
    first = await _overview(client, world.admin, limit="2")
    second = await _overview(
        client, world.admin, limit="2", cursor=first["next_cursor"]
    )

    assert _ranking(first) == [("alpha", 5), ("gamma", 4)]
    assert _ranking(second) == [("beta", 3)]
    assert second["next_cursor"] is None
    assert second["totals"] == first["totals"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"bots": "some"}, "bots"),
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"from": "2025-03-11", "to": "2025-03-09"}, "from"),
        ({"from": "soon"}, "from"),
        ({"to": "later"}, "to"),
    ],
)
async def test_overview_bad_parameters_get_problem_document(
    client: Any, auth: Any, params: dict[str, str], field: str
) -> None:
    response = await client.get(
        "/api/v1/stats/overview", params={**RANGE, **params}, headers=auth
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["field"] == field


async def test_overview_cursor_of_another_range_is_refused(
    client: Any, world: World
) -> None:
    first = await _overview(client, world.admin, limit="1")
    params = {"from": "2025-03-09", "to": "2025-03-12", "cursor": first["next_cursor"]}
    response = await client.get(
        "/api/v1/stats/overview", params=params, headers=world.admin
    )

    assert response.status_code == 422
    assert response.json()["field"] == "cursor"


async def test_overview_needs_analytics_scope(
    client: Any, app: Any, world: World
) -> None:
    links_only = await make_key(app, ["links:read"])
    forbidden = await client.get("/api/v1/stats/overview", headers=links_only)
    anonymous = await client.get("/api/v1/stats/overview")

    assert (forbidden.status_code, forbidden.json()["code"]) == (403, "forbidden")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthorized")
