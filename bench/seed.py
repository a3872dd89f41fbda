"""Create the links a benchmark needs through the API, and count their clicks."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis

from bench.sandbox import REDIS_URL
from bench.servers import boltlink_command
from boltlink.clicks import stream_names

__all__ = ["Tally", "create_key", "create_links", "drain_clicks", "new_codes"]

_PAGE = 200


def create_key(env: dict[str, str]) -> str:
    """Create an API key with ``boltlink keys create``; return the raw key."""
    done = subprocess.run(
        boltlink_command(
            "keys",
            "create",
            "--name=bench",
            "--scope=links:write",
            "--scope=links:read",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"boltlink keys create failed: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def new_codes(count: int, tag: str) -> list[str]:
    """Return ``count`` custom codes no other run uses."""
    nonce = secrets.token_hex(3)
    return [f"{tag}{nonce}-{n}" for n in range(count)]


def create_links(
    base_url: str, key: str, codes: list[str], concurrency: int = 32
) -> None:
    """Create one link per code through the API; raise unless all are 201."""
    asyncio.run(_create_links(base_url, key, codes, concurrency))


async def _create_links(
    base_url: str, key: str, codes: list[str], concurrency: int
) -> None:
    queue = list(reversed(codes))
    headers = {"authorization": f"Bearer {key}"}

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            code = queue.pop()
            body = {"url": f"https://example.com/landing/{code}", "code": code}
            reply = await client.post("/api/v1/links", json=body, headers=headers)
            if reply.status_code != 201:
                raise RuntimeError(
                    f"creating {code!r} answered {reply.status_code}: {reply.text}"
                )

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=30.0
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def store_clicks(base_url: str, key: str) -> int:
    """Return the sum of every link's clicks, as the API reads the store."""
    total: int = 0
    cursor: str | None = None
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
        while True:
            params: dict[str, str | int] = {"limit": _PAGE}
            if cursor:
                params["cursor"] = cursor
            reply = client.get("/api/v1/links", params=params)
            reply.raise_for_status()
            page = reply.json()
            total += sum(item["clicks"] for item in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return total


def stream_clicks(prefix: str) -> int:
    """Return how many clicks the click stream holds (every partition)."""
    client: Any = redis.Redis.from_url(REDIS_URL)
    total = 0
    try:
        for stream in stream_names(prefix, 1):
            start = "-"
            while entries := client.xrange(stream, min=start, max="+", count=5000):
                total += sum(len(orjson.loads(f[b"c"])) for _, f in entries)
                # An exclusive range start ("(id") resumes after the last one.
                start = "(" + entries[-1][0].decode()
    finally:
        client.close()
    return total


@dataclass(frozen=True)
class Tally:
    """Clicks answered, recorded and counted after a redirect benchmark."""

    answered: int
    recorded: int | None
    counted: int
    slack: int
    waited_s: float

    @property
    def exact(self) -> bool:
        """Tell whether no click was lost or counted twice.

        wrk stops with up to one request per connection in flight: the
        server answered (and recorded) it but wrk never read the answer, so
        ``counted`` may exceed ``answered`` by at most ``slack``.
        """
        if self.recorded is not None and self.recorded != self.counted:
            return False
        return 0 <= self.counted - self.answered <= self.slack

    def to_dict(self) -> dict[str, int | float | bool | None]:
        """Return the tally for the JSON file."""
        return {
            "answered": self.answered,
            "recorded": self.recorded,
            "counted": self.counted,
            "slack": self.slack,
            "waited_s": round(self.waited_s, 1),
            "exact": self.exact,
        }


def drain_clicks(
    base_url: str,
    key: str,
    *,
    answered: int,
    slack: int,
    prefix: str | None,
    timeout: float = 60.0,
) -> Tally:
    """Wait until the store's click total stops moving; return the tally."""
    recorded = stream_clicks(prefix) if prefix is not None else None
    started = time.monotonic()
    counted, stable_since = -1, started
    while time.monotonic() - started < timeout:
        now = store_clicks(base_url, key)
        if now != counted:
            counted, stable_since = now, time.monotonic()
        elif counted == recorded or time.monotonic() - stable_since >= 3.0:
            # Every recorded click is counted, or (embedded: no stream to
            # read) the total has not moved for three seconds.
            break
        time.sleep(0.5)
    return Tally(answered, recorded, counted, slack, time.monotonic() - started)
