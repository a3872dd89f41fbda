"""Count, time and trace the API's requests by route template.

The wrapper sits inside the ``/api/v1`` mount only, so redirects never pass
through it. Starlette's router records the route it matched in the request
scope (``scope["route"]``); its path template, never the raw path, becomes
the ``route`` label. A path under the mount that matches no route is
``unmatched``; a method outside the standard set is ``other``.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boltlink import tracing
from boltlink.logs import bind_request
from boltlink.metrics import API_REQUESTS, API_SECONDS, api_method

__all__ = ["ApiInstrumentation"]


class ApiInstrumentation:
    """Wrap the API's router: one counter and one histogram sample a request."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self._prefix = prefix
        # Mount reads its routes from the app it wraps (for url_path_for).
        self.routes: list[Any] = list(getattr(app, "routes", []))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then count it under its route template."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bind_request(scope)
        if tracing.active:
            await self._traced(scope, receive, send)
        else:
            await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> int:
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except HTTPException as exc:
            # The router's own 404 for a path no route matches is answered
            # by the app's handler, outside this wrapper.
            status = exc.status_code
            raise
        finally:
            route, method = self.template(scope), api_method(scope["method"])
            API_REQUESTS.labels(route, method, str(status)).inc()
            API_SECONDS.labels(route, method).observe(time.perf_counter() - started)
        return status

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        method = api_method(scope["method"])
        with tracing.server_span(
            "api", headers, **{"http.request.method": method}
        ) as span:
            status = await self._counted(scope, receive, send)
            route = self.template(scope)
            span.update_name(f"{method} {route}")
            span.set_attributes(
                {"http.route": route, "http.response.status_code": status}
            )

    def template(self, scope: Scope) -> str:
        """Return the path template of the route that served ``scope``."""
        route = scope.get("route")
        if isinstance(route, Route):
            return self._prefix + route.path
        return "unmatched"
