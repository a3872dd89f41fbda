"""Build the app granian serves: the web app plus, when asked, the consumers.

In the embedded profile ``boltlink serve`` is the whole product, so it
runs the aggregate and ingest consumers too: in a child process of its own
(:mod:`boltlink.workers.child`), whose workers then only serve. An app made
by :func:`create_app` with ``inprocess_workers`` set, served by some other
means, runs them in a worker instead. Only one process runs them: chDB
allows one process per data folder, and the one holding ``pipeline.lock``
in the data folder is it; if it dies its lock goes with it and the next
one takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
from typing import IO

from starlette.applications import Starlette

from boltlink import tracing
from boltlink.processes import set_parent_death_signal
from boltlink.settings import Settings
from boltlink.web.app import build_app
from boltlink.workers.run import ROLES, run_role

__all__ = ["create_app", "create_worker_app", "run_pipeline"]

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


def create_app(settings: Settings | None = None, *, worker: bool = False) -> Starlette:
    """Return the app for ``settings`` (read from the environment if None).

    ``worker``: the app is its process's only tenant (a granian worker of
    ``boltlink serve``), which lets it tune the garbage collector for itself.
    """
    settings = settings or Settings.from_env()
    if settings.tracing and not tracing.active:
        tracing.configure("serve")
    jobs = [run_pipeline] if settings.inprocess_workers else []
    return build_app(settings, jobs, freeze_heap=worker)


def create_worker_app() -> Starlette:
    """Return the app of one granian worker, which stops when serve dies."""
    _stop_with_parent()
    return create_app(worker=True)


def _stop_with_parent() -> None:
    # A SIGKILLed `boltlink serve` cannot stop its workers, which would go on
    # serving and consuming; the kernel sends each one SIGTERM instead
    # (PR_SET_PDEATHSIG), as it sends the embedded Valkey SIGKILL.
    if not sys.platform.startswith("linux"):
        return
    set_parent_death_signal(signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        # The parent died before the request above took effect.
        os.kill(os.getpid(), signal.SIGTERM)
