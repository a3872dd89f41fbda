"""Run the click consumers of ``boltlink serve`` in a process of their own.

In the embedded profile (and whenever ClickHouse is chDB) ``boltlink serve``
runs the aggregate and ingest consumers itself. They run beside the web
workers, in one child process that ``serve`` starts before granian and
stops after it, so a redirect never waits for the GIL while a batch is
enriched or inserted into chDB. The child holds the chDB folder and answers
the workers' analytics reads over the relay (:mod:`boltlink.analytics.relay`).

``ConsumerProcess`` is serve's side: start, watch, restart, stop. The
child dies with serve (``PR_SET_PDEATHSIG``), and runs in a session of its
own, so a Ctrl-C in the terminal reaches serve alone, which stops the
child only after its workers wrote their last clicks.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import logging.config
import os
import signal
import subprocess
import sys
import threading
import time

from boltlink.errors import BoltLinkError
from boltlink.settings import Settings

__all__ = ["CONSUMER_NICENESS", "ConsumerProcess", "main"]

logger = logging.getLogger("boltlink.serve")

_PR_SET_PDEATHSIG = 1
#: How much lower the consumers' CPU priority is than the workers'.
CONSUMER_NICENESS = 10
#: Seconds between restarts of a child that keeps dying.
_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)
#: A child that ran this long before it died restarts without delay.
_STABLE_AFTER = 30.0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM, so that it still
    # finishes its batch when serve is killed.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ConsumerProcess:
    """Start the consumers' child, restart it when it dies, stop it last."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """Return the running child's process id."""
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the child and a thread that restarts it if it dies."""
        self._spawn()
        self._watcher = threading.Thread(
            target=self._watch, name="consumer-process", daemon=True
        )
        self._watcher.start()

    def _spawn(self) -> None:
        env = {**os.environ, **self._settings.to_env()}
        with self._lock:
            if self._stopping.is_set():
                return
            self._process = subprocess.Popen(
                [sys.executable, "-m", "boltlink.workers.child", str(os.getpid())],
                env=env,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        logger.info("consumers started in process pid=%d", self._process.pid)

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            failures = 0 if time.monotonic() - started > _STABLE_AFTER else failures
            delay = _RESTART_DELAYS[min(failures, len(_RESTART_DELAYS) - 1)]
            failures += 1
            # Clicks it had not acknowledged stay pending in the stream; the
            # new child reclaims them after BOLTLINK_CLAIM_IDLE_MS.
            logger.error(
                "consumer process pid=%d exited with code %d; restarting in %.1f s",
                process.pid,
                code,
                delay,
            )
            if self._stopping.wait(delay):
                return
            self._spawn()

    def stop(self) -> None:
        """Ask the child to finish its batch and stop; kill it if it hangs."""
        with self._lock:
            self._stopping.set()
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self._settings.shutdown_timeout + 5)
        except subprocess.TimeoutExpired:
            logger.error("consumer process pid=%d did not stop, killed", process.pid)
            process.kill()
            process.wait()


def main() -> None:
    """Run both consumer roles until SIGTERM (the child's entry point)."""
    from boltlink import metrics, tracing
    from boltlink.asgi import run_pipeline
    from boltlink.logs import logging_config

    settings = Settings.from_env()
    # Redirects first: when serve and its consumers want more CPU than the
    # machine has, the consumers yield and fall behind, and the stream holds
    # the clicks until they catch up (docs/configuration.md, "Profiles").
    os.nice(CONSUMER_NICENESS)
    logging.config.dictConfig(
        logging_config(
            settings.log_level,
            settings.log_format,
            log_probes=settings.access_log_probes,
        )
    )
    if settings.tracing:
        tracing.configure("serve")
    # Serve was killed before PR_SET_PDEATHSIG took effect: nothing would
    # ever stop this process, so it does not start.
    if len(sys.argv) > 1 and os.getppid() != int(sys.argv[1]):
        return

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_pipeline(settings, stop)

    try:
        asyncio.run(run())
    except BoltLinkError as exc:
        # A backend it cannot reach or a folder another process holds: one
        # line, then serve restarts it after a pause.
        logging.getLogger("boltlink.serve").error("consumer process stopped: %s", exc)
        sys.exit(1)
    finally:
        metrics.mark_stopped(settings.metrics_dir)


if __name__ == "__main__":
    main()
