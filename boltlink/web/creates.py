"""Create links with a group commit: concurrent creates share one insert.

A create request joins the worker's queue. When fewer than ``WRITERS``
writes are in flight the queue is written at once; requests that arrive
while they are all busy wait for the next write, which carries all of
them. Each write is one ``create_links`` call (on Postgres one statement,
so one round trip and one commit) and one Redis round trip that caches the
new links and announces their codes. Nothing waits on a timer: a lone
request is written as soon as it arrives.

Each request still hears its own outcome. Of two requests for one code in
a batch the first is inserted and the second is told the code is taken, as
it would be a moment later; a random code that collides is drawn again and
goes with the next batch. A batch that fails for a reason other than the
store being unreachable is written again one link at a time, so a bad row
fails only its own request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from boltlink.codes import random_code
from boltlink.errors import BackendUnavailable, CodeTaken
from boltlink.models import Link, NewLink
from boltlink.store import LinkStore
from boltlink.web.resolver import LinkResolver

__all__ = ["LinkCreator"]

logger = logging.getLogger("boltlink.api")

#: Random codes drawn for one request before it is refused.
RANDOM_CODE_ATTEMPTS = 8
#: Batches in flight at once: while one waits on Postgres or Redis, the
#: next is gathered and sent, so neither round trip leaves the worker idle.
WRITERS = 2

_Outcome = Link | None | Exception


@dataclass(slots=True)
class _Request:
    """One create waiting for its batch."""

    new: NewLink
    custom: bool
    attempts_left: int
    future: asyncio.Future[Link]

    def succeed(self, link: Link) -> None:
        if not self.future.done():
            self.future.set_result(link)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class LinkCreator:
    """Insert the links of concurrent create requests in shared batches."""

    def __init__(self, store: LinkStore, resolver: LinkResolver) -> None:
        self._store = store
        self._resolver = resolver
        self._pending: list[_Request] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def create(self, fields: dict[str, Any], created_by: int | None) -> Link:
        """Store a link of checked ``fields``; raise ``CodeTaken`` for a taken code.

        ``fields["code"]`` is the caller's code, or None for a random one.
        """
        custom = fields.pop("code")
        new = NewLink(code=custom or random_code(), created_by=created_by, **fields)
        future: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        attempts = 1 if custom else RANDOM_CODE_ATTEMPTS
        self._pending.append(_Request(new, bool(custom), attempts - 1, future))
        if len(self._writers) < WRITERS:
            self._writers.add(asyncio.create_task(self._write_queue(), name="creates"))
        return await future

    async def _write_queue(self) -> None:
        """Write batches until the queue is empty."""
        batch: list[_Request] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._write_batch(batch)
        except Exception as exc:
            # A fault no batch expects: each waiting request raises it, and
            # the app's error handler logs it once per request.
            self._fail_all(batch, exc)
        except asyncio.CancelledError:
            self._fail_all(batch, _stopped())
            raise
        finally:
            # At once, not in a done callback: a request queued after the
            # loop ended must find a free writer slot.
            self._writers.discard(asyncio.current_task())

    def _fail_all(self, batch: list[_Request], exc: Exception) -> None:
        """Answer every request of ``batch`` and of the queue with ``exc``."""
        for request in [*batch, *self._pending]:
            request.fail(exc)
        self._pending = []

    async def _write_batch(self, batch: list[_Request]) -> None:
        """Insert one batch, announce what was created, answer each request."""
        requests = self._first_of_each_code(batch)
        outcomes = await self._insert(requests)

        created: list[tuple[_Request, Link]] = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, Link):
                created.append((request, outcome))
            elif isinstance(outcome, Exception):
                request.fail(outcome)
            else:
                self._taken(request)

        # Announced before any response: a redirect that follows the 201 in
        # another worker must not find the code's old negative cache entry.
        await self._resolver.publish_links([(link.code, link) for _, link in created])
        for request, link in created:
            request.succeed(link)

    def _first_of_each_code(self, batch: list[_Request]) -> list[_Request]:
        """Keep the first request of each code; the later ones lost the race."""
        chosen: dict[tuple[str, str], _Request] = {}
        for request in batch:
            if request.future.done():
                continue  # the client went away before its link was written
            code = (request.new.domain, request.new.code)
            if code in chosen:
                self._taken(request)
            else:
                chosen[code] = request
        return list(chosen.values())

    async def _insert(self, requests: list[_Request]) -> list[_Outcome]:
        """Insert the batch; on a fault of one row, each link on its own."""
        if not requests:
            return []
        news = [request.new for request in requests]
        try:
            return list(await self._store.create_links(news))
        except BackendUnavailable as exc:
            return [exc] * len(requests)
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            logger.warning(
                "batch of %d new links failed, writing each alone: %r",
                len(requests),
                exc,
            )
        return [await self._insert_alone(new) for new in news]

    async def _insert_alone(self, new: NewLink) -> _Outcome:
        try:
            [link] = await self._store.create_links([new])
        except Exception as exc:
            return exc
        return link

    def _taken(self, request: _Request) -> None:
        """Refuse a taken custom code; draw a random one again, if allowed."""
        if request.custom or request.attempts_left <= 0:
            code = request.new.code
            request.fail(CodeTaken(f"code {code!r} already taken", field="code"))
            return
        # A random code that collides is retried with a fresh one; the
        # caller only hears of a collision on a code it chose.
        request.new = dataclasses.replace(request.new, code=random_code())
        request.attempts_left -= 1
        self._pending.append(request)


def _stopped() -> BackendUnavailable:
    return BackendUnavailable("link creation stopped before the link was written")
