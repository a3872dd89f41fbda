"""Keep serve's child processes running, and tie them to serve's life.

``boltlink serve`` starts two kinds of children besides granian's workers:
the embedded Valkey and the consumer process. :class:`Supervised` is what
both need: start one, watch it from a thread, start it again after a pause
when it exits on its own, and on :meth:`Supervised.stop` ask it to stop
(SIGTERM) before killing it. Each child also gets a parent-death signal, so
that a SIGKILLed serve leaves nothing running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from boltlink.errors import BoltLinkError

__all__ = ["Supervised", "die_with_parent", "pid_alive", "set_parent_death_signal"]

logger = logging.getLogger("boltlink.serve")

_PR_SET_PDEATHSIG = 1
#: Pauses before restarts of a child that keeps dying, then the last again.
_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)
#: A child that ran this long before it died restarts after the first pause.
_STABLE_AFTER = 30.0

Process = subprocess.Popen[bytes]


def pid_alive(pid: int) -> bool:
    """Tell whether a process ``pid`` exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_parent_death_signal(sig: signal.Signals) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """Return a ``preexec_fn`` giving the child ``sig`` when serve dies."""
    return lambda: set_parent_death_signal(sig)


class Supervised:
    """One child process, started again whenever it exits before :meth:`stop`.

    ``spawn`` starts the process (and logs that it did); ``ready``, if given,
    returns once a new process serves, or raises.
    """

    def __init__(
        self,
        name: str,
        spawn: Callable[[], Process],
        *,
        ready: Callable[[Process], None] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self._spawn_process = spawn
        self._ready = ready
        self._stop_timeout = stop_timeout
        self._process: Process | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def pid(self) -> int | None:
        """Return the running child's process id."""
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the child, wait until it is ready, then watch it."""
        try:
            self._spawn()
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._watch, name=self.name, daemon=True).start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise BoltLinkError(f"{self.name} is stopping")
            process = self._process = self._spawn_process()
        if self._ready is not None:
            self._ready(process)

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
            if time.monotonic() - started > _STABLE_AFTER:
                failures = 0
            delay = _RESTART_DELAYS[min(failures, len(_RESTART_DELAYS) - 1)]
            failures += 1
            logger.error(
                "%s pid=%d exited with code %d; starting it again in %.1f s",
                self.name,
                process.pid,
                code,
                delay,
            )
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
            except (BoltLinkError, OSError) as exc:
                if not self._stopping.is_set():
                    logger.error("%s did not come back: %s", self.name, exc)

    def stop(self, timeout: float | None = None) -> Process | None:
        """Stop the child: SIGTERM, then SIGKILL after ``timeout``; return it."""
        with self._lock:
            self._stopping.set()
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return process
        process.terminate()
        try:
            process.wait(self._stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            logger.error("%s pid=%d did not stop, killed", self.name, process.pid)
            process.kill()
            process.wait()
        return process
