"""Answer ``GET /{code}`` and ``HEAD /{code}``: find the link, count, redirect."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from boltlink import tracing
from boltlink.clicks import Click
from boltlink.errors import ApiError, LinkGone, LinkNotFound
from boltlink.logs import bind_request
from boltlink.metrics import redirect_timer
from boltlink.web.runtime import Runtime

__all__ = ["redirect"]

# Any code the API could have stored; other paths are 404 without a lookup,
# so junk paths never reach a cache or the store.
_CODE_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# A redirect must reach BoltLink every time to be counted: no browser or
# shared cache may keep it, not even a permanent one (RFC 9111 section 5.2).
_CACHE_CONTROL = "private, no-store, max-age=0"

# The outcome a redirect's status stands for: 200 is the unlock form of a
# password link, 429 a per-link rate limit.
_OUTCOMES = {
    301: "redirected",
    302: "redirected",
    307: "redirected",
    308: "redirected",
    200: "password",
    404: "not_found",
    410: "gone",
    429: "limited",
}
_perf_counter = time.perf_counter


#: Headers by which browsers mark a speculative fetch, a prefetch or a
#: prerender the user may never look at: Sec-Purpose (the Fetch standard),
#: Purpose (older Chrome and Safari), X-Purpose (Safari), X-Moz (Firefox).
PURPOSE_HEADERS = frozenset({b"sec-purpose", b"purpose", b"x-purpose", b"x-moz"})


def is_speculative(purpose: bytes) -> bool:
    """Tell whether a purpose header's value marks a prefetch or prerender."""
    value = purpose.lower()
    return b"prefetch" in value or b"prerender" in value or value.strip() == b"preview"


def speculative(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Tell whether raw request ``headers`` mark a browser's speculative fetch."""
    return any(
        name in PURPOSE_HEADERS and is_speculative(value) for name, value in headers
    )


def _click_of(request: Request, link_id: int, code: str) -> Click:
    headers = request.headers
    return Click(
        link_id=link_id,
        code=code,
        ts_ms=int(time.time() * 1000),
        ip=request.client.host if request.client else "",
        user_agent=headers.get("user-agent", "")[:1024],
        referrer=headers.get("referer", "")[:2048],
        accept_language=headers.get("accept-language", "")[:256],
        trace=tracing.traceparent(),
    )


async def redirect(request: Request) -> Response:
    """Redirect to a link's destination, recording the click of a GET."""
    started = _perf_counter()
    bind_request(request.scope)
    if tracing.active:
        return await _redirect_traced(request, started)
    try:
        response = await _redirect_counted(request)
    except ApiError as exc:
        _observe(_OUTCOMES.get(exc.status, "error"), started)
        raise
    except Exception:
        _observe("error", started)
        raise
    _observe(_OUTCOMES.get(response.status_code, "error"), started)
    return response


def _observe(outcome: str, started: float) -> None:
    redirect_timer[outcome].observe(_perf_counter() - started)


async def _redirect_traced(request: Request, started: float) -> Response:
    attributes = {"http.request.method": request.method, "http.route": "/{code}"}
    with tracing.server_span("redirect", request.headers, **attributes) as span:
        try:
            response = await _redirect_counted(request)
        except ApiError as exc:
            outcome = _OUTCOMES.get(exc.status, "error")
            span.set_attributes(
                {"http.response.status_code": exc.status, "boltlink.outcome": outcome}
            )
            _observe(outcome, started)
            raise
        except Exception:
            _observe("error", started)
            raise
        outcome = _OUTCOMES.get(response.status_code, "error")
        span.set_attributes(
            {
                "http.response.status_code": response.status_code,
                "boltlink.outcome": outcome,
            }
        )
    _observe(outcome, started)
    return response


async def _redirect_counted(request: Request) -> Response:
    code: str = request.path_params["code"]
    if not _CODE_SHAPE.fullmatch(code):
        raise LinkNotFound(f"code {code!r} not found")
    runtime: Runtime = request.app.state.runtime

    target = await runtime.resolver.resolve_link(code)
    if target is None:
        raise LinkNotFound(f"code {code!r} not found")
    if not target.is_live(time.time()):
        raise LinkGone(f"link {code!r} has expired or was deleted")

    # HEAD answers like GET but is never a click (RFC 9110 section 9.3.2:
    # HEAD is for metadata, crawlers and link checkers send it), and neither
    # is a browser's prefetch or prerender: the visitor may never follow it
    # (and one who does may be shown the fetched copy unasked, uncounted).
    if request.method == "GET" and not speculative(request.scope["headers"]):
        click = _click_of(request, target.link_id, code)
        if tracing.active:
            with tracing.span("click.record"):
                await runtime.recorder.record(click)
        else:
            await runtime.recorder.record(click)
    return Response(
        status_code=target.status,
        headers={"location": target.url, "cache-control": _CACHE_CONTROL},
    )
