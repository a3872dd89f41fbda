"""Answer the redirects this worker can answer from memory before Starlette.

A redirect of a code in the worker's local cache needs no I/O but its
click's stream write, yet Starlette's middleware, routing, request and
response objects cost more than the rest of it together (about half of a
cached redirect's time, ``docs/performance.md``). :class:`RedirectApp` is
the Starlette app with one shortcut in front: a ``GET`` or ``HEAD`` of
``/{code}`` whose code the local cache holds is answered by
:func:`serve_cached`; every other request, the first lookup of a code
included, takes the full Starlette path. Both answer alike: status,
headers, problem document, recorded click, metrics and log context. While
tracing is on, every request takes the full path, which opens the spans.

NOTE: this path repeats the redirect view's decisions (gone, HEAD not
counted, the click, the headers) and skips the app's middleware. A new
decision in the view (password links, rate limits, targeting) must be made
here too, or keep such links out of the fast path; ``tests/test_fastpath.py``
compares the two paths answer by answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette

from boltlink import tracing
from boltlink.clicks import Click
from boltlink.errors import ApiError, LinkGone, LinkNotFound
from boltlink.logs import bind_request
from boltlink.metrics import redirect_timer
from boltlink.web.problems import problem
from boltlink.web.redirect import PURPOSE_HEADERS, is_speculative
from boltlink.web.runtime import Runtime

__all__ = ["RedirectApp"]

logger = logging.getLogger("boltlink.redirect")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The headers a redirect answers with besides its location, as Starlette's
# Response(headers=...) writes them (see boltlink.web.redirect).
_CACHE_CONTROL = (b"cache-control", b"private, no-store, max-age=0")
_NO_BODY = (b"content-length", b"0")
_EMPTY_BODY = {"type": "http.response.body", "body": b""}
_perf_counter = time.perf_counter


class RedirectApp(Starlette):
    """The Starlette app, with cached redirects answered ahead of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The first segments of the routes matched before ``/{code}``: a
        # path such as /health is never a code, whatever a cache holds.
        paths = [str(getattr(route, "path", "/{")) for route in self.routes]
        self._routed = frozenset(
            path.strip("/").split("/")[0] for path in paths if not path.startswith("/{")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a cached redirect at once; hand anything else to Starlette."""
        if scope["type"] == "http" and not tracing.active:
            runtime: Runtime | None = getattr(self.state, "runtime", None)
            if runtime is not None and await self._serve_cached(runtime, scope, send):
                return
        await super().__call__(scope, receive, send)

    async def _serve_cached(self, runtime: Runtime, scope: Scope, send: Send) -> bool:
        """Answer ``GET``/``HEAD /{code}`` from the local cache; False if not.

        Only a code the local cache holds is answered here: it got there
        through the redirect view, which checked its shape, so an unknown
        or malformed code, and any other path, is left to the full app.
        """
        method = scope["method"]
        if (method != "GET" and method != "HEAD") or scope.get("root_path"):
            return False
        code: str = scope["path"][1:]
        if code in self._routed:
            return False
        held = runtime.resolver.cached(code)
        if held is None:
            return False

        started = _perf_counter()
        bind_request(scope)
        target = held[1]
        if target is None:
            error: ApiError = LinkNotFound(f"code {code!r} not found")
            await _refuse(error, scope, send, started)
            return True
        if not target.is_live(time.time()):
            error = LinkGone(f"link {code!r} has expired or was deleted")
            await _refuse(error, scope, send, started)
            return True

        # HEAD and a prefetch are never a click, as in the view.
        if method == "GET":
            click = _click_of(scope, target.link_id, code)
            try:
                if click is not None:
                    await runtime.recorder.record(click)
            except Exception:
                await _fail(scope, send, started)
                return True
        await _redirect(target.status, target.url, send, started)
        return True


async def _redirect(status: int, url: str, send: Send, started: float) -> None:
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"location", url.encode("latin-1")), _CACHE_CONTROL, _NO_BODY],
    }
    redirect_timer["redirected"].observe(_perf_counter() - started)
    await send(start)
    await send(_EMPTY_BODY)


def _click_of(scope: Scope, link_id: int, code: str) -> Click | None:
    # One pass over the raw headers; the first of a repeated header counts,
    # as with Starlette's Headers.get. None for a prefetch.
    agent = referrer = language = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            agent = value if agent is None else agent
        elif name == b"referer":
            referrer = value if referrer is None else referrer
        elif name == b"accept-language":
            language = value if language is None else language
        elif name in PURPOSE_HEADERS and is_speculative(value):
            return None
    client = scope.get("client")
    return Click(
        link_id=link_id,
        code=code,
        ts_ms=int(time.time() * 1000),
        ip=client[0] if client else "",
        user_agent=agent.decode("latin-1")[:1024] if agent else "",
        referrer=referrer.decode("latin-1")[:2048] if referrer else "",
        accept_language=language.decode("latin-1")[:256] if language else "",
    )


async def _refuse(error: ApiError, scope: Scope, send: Send, started: float) -> None:
    # The same document as the app's ApiError handler (boltlink.web.problems).
    response = problem(
        error.status, error.code, error.title, error.detail, field=error.field
    )
    outcome = "not_found" if error.status == 404 else "gone"
    redirect_timer[outcome].observe(_perf_counter() - started)
    await response(scope, _no_receive, send)


async def _fail(scope: Scope, send: Send, started: float) -> None:
    logger.exception("unhandled error on %s /{code}", scope["method"])
    redirect_timer["error"].observe(_perf_counter() - started)
    response = problem(
        500, "internal_error", "Internal error", "unexpected server error"
    )
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    raise RuntimeError("a cached redirect reads no request body")
