"""Turn every error into a JSON problem document (RFC 9457) in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route

from boltlink.errors import ApiError, BackendUnavailable

__all__ = ["EXCEPTION_HANDLERS", "problem"]

logger = logging.getLogger("boltlink.api")

_TYPE_BASE = "https://boltlink.dev/problems/"

# Stable codes for the errors Starlette itself raises (unknown route, bad
# method, and so on).
_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Return a problem document response with a stable machine-readable code."""
    body = {
        "type": _TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem(exc.status, exc.code, exc.title, exc.detail, field=exc.field)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = exc.headers
    if exc.status_code == 404:
        detail = f"no route for path {request.url.path!r}"
    elif exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched;
        # the path may have others (RFC 9110 section 15.5.6: list them all).
        # The routers below have rewritten the scope's root path on the way.
        scope = request.scope
        path = {"type": "http", "path": scope["path"]}
        path["root_path"] = scope.get("app_root_path", scope.get("root_path", ""))
        allowed = _methods_for(request.app.routes, path)
        kept = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
        headers = {**kept, "allow": ", ".join(sorted(allowed))}
    return problem(exc.status_code, code, title, detail, headers=headers)


def _methods_for(routes: list[Any], scope: Any) -> set[str]:
    """Return every method some route among ``routes`` takes at the scope's path."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            match, child = route.matches(scope)
            if match != Match.NONE:
                methods |= _methods_for(route.routes, {**scope, **child})
        elif isinstance(route, Route) and route.methods:
            # Ask with a method the route takes: only its path decides.
            probe = {**scope, "method": next(iter(route.methods))}
            if route.matches(probe)[0] == Match.FULL:
                methods |= route.methods
    return methods


async def _unavailable(request: Request, exc: Exception) -> Response:
    logger.warning(
        "backend unavailable on %s %r: %s", request.method, request.url.path, exc
    )
    return problem(
        503,
        "backend_unavailable",
        "Service unavailable",
        "a backend is unreachable, try again shortly",
        headers={"retry-after": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The path is user input: %r keeps a CR or LF in it from forging a line.
    logger.exception("unhandled error on %s %r", request.method, request.url.path)
    return problem(500, "internal_error", "Internal error", "unexpected server error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    BackendUnavailable: _unavailable,
    Exception: _unexpected,
}
