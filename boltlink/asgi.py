"""Build the app granian serves: the web app plus, when asked, the consumers.

In the embedded profile ``boltlink serve`` is the whole product, so the
aggregate and ingest consumers run inside it. With several worker processes
only one of them runs the consumers: chDB allows one process per data
folder, and the one holding ``pipeline.lock`` in the data folder is it. If
that worker dies its lock goes with it and a respawned worker takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from typing import IO

from starlette.applications import Starlette

from boltlink.settings import Settings
from boltlink.web.app import build_app
from boltlink.workers.run import ROLES, run_role

__all__ = ["create_app", "run_pipeline"]

logger = logging.getLogger("boltlink.serve")


async def run_pipeline(settings: Settings, stop: asyncio.Event) -> None:
    """Run both consumer roles in this process while it holds the lock."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "pipeline.lock", "a+") as lock:
        while not _try_lock(lock):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            if stop.is_set():
                return
        await asyncio.gather(*(run_role(role, settings, stop) for role in ROLES))


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def create_app(settings: Settings | None = None) -> Starlette:
    """Return the app for ``settings`` (read from the environment if None)."""
    settings = settings or Settings.from_env()
    jobs = [run_pipeline] if settings.inprocess_workers else []
    return build_app(settings, jobs)
