"""Drive wrk against 127.0.0.1 and read the figures its Lua scripts print."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LUA_DIR", "WrkError", "WrkResult", "require_wrk", "run_wrk"]

LUA_DIR = Path(__file__).resolve().parent / "lua"
INSTALL_HINT = "apt-get update && apt-get install -y wrk"

_MARKER = "BENCH_JSON "


class WrkError(RuntimeError):
    """Raised when wrk is missing, fails or prints no figures."""


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run; latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    timeouts: int
    status_errors: int
    unexpected: int
    wrapped: int

    @property
    def rps(self) -> float:
        """Return completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Return failed requests: non-2xx/3xx answers, socket errors, timeouts."""
        return self.status_errors + self.socket_errors + self.timeouts

    @property
    def answered_ok(self) -> int:
        """Return the requests answered with a 2xx or 3xx status."""
        return self.requests - self.status_errors

    def to_dict(self) -> dict[str, float | int]:
        """Return the figures, the derived ones included, for the JSON file."""
        return {**asdict(self), "rps": round(self.rps, 1), "errors": self.errors}


def require_wrk() -> str:
    """Return the wrk executable, or raise WrkError with how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(
            f"wrk not found: install it with `{INSTALL_HINT}` "
            "or run the bench with --install-wrk"
        )
    return path


def install_wrk() -> None:
    """Install wrk with apt-get (needs root); raise WrkError on failure."""
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "wrk"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise WrkError(f"{' '.join(command)} failed: {done.stderr.strip()[-200:]}")


def run_wrk(
    url: str,
    script: str,
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 2,
    env: dict[str, str] | None = None,
) -> WrkResult:
    """Run wrk with ``script`` from bench/lua for ``seconds`` and return figures."""
    assert url.startswith("http://127.0.0.1:"), "load must target 127.0.0.1 only"
    command = [
        require_wrk(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=5s",
        f"--script={LUA_DIR / script}",
        url,
    ]
    script_env = {"BENCH_LUA_DIR": str(LUA_DIR), "BENCH_THREADS": str(threads)}
    done = subprocess.run(
        command,
        env={**os.environ, **script_env, **(env or {})},
        capture_output=True,
        text=True,
        # wrk stops by itself; this only bounds a hung wrk.
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise WrkError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return _parse(done.stdout)


def _parse(stdout: str) -> WrkResult:
    lines = [line for line in stdout.splitlines() if line.startswith(_MARKER)]
    if not lines:
        raise WrkError(f"wrk printed no figures: {stdout.strip()[-300:]!r}")
    raw = json.loads(lines[-1].removeprefix(_MARKER))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        socket_errors=raw["connect"] + raw["read"] + raw["write"],
        timeouts=raw["timeout"],
        status_errors=raw["status"],
        unexpected=raw["unexpected"],
        wrapped=raw["wrapped"],
    )
