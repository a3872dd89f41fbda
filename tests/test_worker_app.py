"""Test what the app does for itself when it is a server worker's only tenant."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from boltlink.asgi import create_app
from boltlink.store import migrate

pytestmark = pytest.mark.redis


@pytest.fixture
def unfrozen() -> Any:
    """Leave the test process's collector as it was found."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


@pytest.mark.parametrize("worker", [True, False])
async def test_a_worker_keeps_its_startup_heap_out_of_full_collections(
    settings: Any, unfrozen: None, worker: bool
) -> None:
    migrate(settings.database_dsn, schema=settings.database_schema)
    app = create_app(settings, worker=worker)
    async with app.router.lifespan_context(app):
        # The runtime built at start-up is among the objects no full
        # collection walks again; an app sharing its process leaves the
        # collector alone.
        frozen = gc.get_freeze_count()
        assert frozen > 10_000 if worker else frozen == 0
