"""Answer ``GET /{code}`` and ``HEAD /{code}``: find the link, count, redirect."""

from __future__ import annotations

import re
import time

from starlette.requests import Request
from starlette.responses import Response

from boltlink.clicks import Click
from boltlink.errors import LinkGone, LinkNotFound
from boltlink.web.runtime import Runtime

__all__ = ["redirect"]

# Any code the API could have stored; other paths are 404 without a lookup,
# so junk paths never reach a cache or the store.
_CODE_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# A redirect must reach BoltLink every time to be counted: no browser or
# shared cache may keep it, not even a permanent one (RFC 9111 section 5.2).
_CACHE_CONTROL = "private, no-store, max-age=0"


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
    )


async def redirect(request: Request) -> Response:
    """Redirect to a link's destination, recording the click of a GET."""
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
    # HEAD is for metadata, crawlers and link checkers send it).
    if request.method == "GET":
        await runtime.recorder.record(_click_of(request, target.link_id, code))
    return Response(
        status_code=target.status,
        headers={"location": target.url, "cache-control": _CACHE_CONTROL},
    )
