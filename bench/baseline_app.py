"""Serve the two baselines BoltLink's redirects are measured against.

``starlette_app`` is the framework's floor: a bare Starlette app with one
route answering every code with a 302, no I/O. ``raw_app`` is the ceiling:
a plain ASGI callable sending the same 302 without any framework. Both are
served by granian exactly as BoltLink is (same interface, loop and
workers), so a ratio to them measures BoltLink's own work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

__all__ = ["TARGET", "raw_app", "starlette_app"]

TARGET = "https://example.com/landing"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _redirect(request: Request) -> Response:
    return RedirectResponse(TARGET, status_code=302)


starlette_app = Starlette(routes=[Route("/{code}", _redirect)])

_START = {
    "type": "http.response.start",
    "status": 302,
    "headers": [
        (b"location", TARGET.encode()),
        (b"content-length", b"0"),
    ],
}
_BODY = {"type": "http.response.body", "body": b""}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"].removeprefix("lifespan.")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with a 302; accept the lifespan events."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send(_START)
    await send(_BODY)
