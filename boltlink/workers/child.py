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
import logging
import logging.config
import os
import signal
import subprocess
import sys

from boltlink.errors import BoltLinkError
from boltlink.processes import Supervised, die_with_parent
from boltlink.settings import Settings

__all__ = ["CONSUMER_NICENESS", "ConsumerProcess", "main"]

logger = logging.getLogger("boltlink.serve")

#: How much lower the consumers' CPU priority is than the workers'.
CONSUMER_NICENESS = 10


class ConsumerProcess:
    """Start the consumers' child, restart it when it dies, stop it last."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Stopped with SIGTERM, it finishes its batch within the shutdown
        # timeout; clicks a dead one had not acknowledged stay pending in
        # the stream, and the next one reclaims them after
        # BOLTLINK_CLAIM_IDLE_MS.
        self._child = Supervised(
            "consumer process",
            self._spawn,
            stop_timeout=settings.shutdown_timeout + 5,
        )

    @property
    def pid(self) -> int | None:
        """Return the running child's process id."""
        return self._child.pid

    def start(self) -> None:
        """Start the child and a thread that restarts it if it dies."""
        self._child.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "boltlink.workers.child", str(os.getpid())],
            env={**os.environ, **self._settings.to_env()},
            # SIGTERM, so that it still finishes its batch when serve dies.
            preexec_fn=die_with_parent(signal.SIGTERM),
            start_new_session=True,
        )
        logger.info("consumers started in process pid=%d", process.pid)
        return process

    def stop(self) -> None:
        """Ask the child to finish its batch and stop; kill it if it hangs."""
        self._child.stop()


def main() -> None:
    """Run both consumer roles until SIGTERM (the child's entry point)."""
    from boltlink import metrics, tracing
    from boltlink.asgi import run_pipeline
    from boltlink.logs import logging_config
    from boltlink.workers.run import tune_collector

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
    tune_collector()

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
