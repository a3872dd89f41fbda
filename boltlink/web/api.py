"""Serve the links API under ``/api/v1``: create, read, list, update, delete."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from boltlink.apikeys import hash_key
from boltlink.errors import (
    Forbidden,
    LinkGone,
    LinkNotFound,
    Unauthorized,
    ValidationFailed,
)
from boltlink.models import ApiKey, Link
from boltlink.web.creates import LinkCreator
from boltlink.web.linkinput import parse_create, parse_patch
from boltlink.web.params import (
    code_param,
    decode_cursor,
    encode_cursor,
    is_decimal,
    read_json,
    tag_param,
)
from boltlink.web.runtime import Runtime

__all__ = ["routes"]

_DEFAULT_PAGE = 50
_MAX_PAGE = 200
# Query parameters that look like a credential: refused outright so a key
# never lands in an access log, a proxy log or browser history.
_KEY_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token"})


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authorize(request: Request, scope: str) -> ApiKey:
    """Return the request's API key if it holds ``scope``, else raise."""
    if request.scope["query_string"] and any(
        name.lower() in _KEY_PARAMS for name in request.query_params
    ):
        raise Unauthorized(
            "api keys are accepted only in the Authorization or X-Api-Key header"
        )
    raw = _raw_key(request.scope["headers"])
    key = await _stored_key(_runtime(request), hash_key(raw))
    if key is None or key.revoked_at is not None:
        raise Unauthorized("unknown or revoked api key")
    if not key.allows(scope):
        raise Forbidden(f"api key {key.prefix!r} lacks scope {scope!r}")
    return key


def _raw_key(headers: list[tuple[bytes, bytes]]) -> str:
    """Return the key sent in the one credential header, else raise."""
    # One pass over the raw headers (ASGI names them in lower case).
    credentials = [
        (name, value)
        for name, value in headers
        if name == b"authorization" or name == b"x-api-key"
    ]
    # Two credentials are one too many: which one a proxy or the app would
    # read is a guess, so the request is refused.
    if len(credentials) > 1:
        raise Unauthorized("send one api key, in one Authorization or X-Api-Key")
    if not credentials:
        raise Unauthorized("missing api key: send Authorization: Bearer <key>")

    name, value = credentials[0]
    sent = value.decode("latin-1")
    if not sent:
        raise Unauthorized("missing api key: send Authorization: Bearer <key>")
    if name == b"x-api-key":
        raw = sent
    else:
        scheme, _, token = sent.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("authorization header must read 'Bearer <key>'")
        raw = token.strip()
    return raw


async def _stored_key(runtime: Runtime, digest: str) -> ApiKey | None:
    """Return the key of ``digest`` from the worker's cache, else the store."""
    cache = runtime.resolver.keys
    key = cache.get(digest)
    if key is None:
        generation = cache.generation
        key = await runtime.store.get_key(digest)
        # Unknown digests are not kept: a flood of made-up keys must not
        # fill the cache, and a key created later must work at once.
        if key is not None:
            cache.put(digest, key, generation)
    return key


def render_link(link: Link, public_url: str) -> dict[str, Any]:
    """Return the API representation of a link, for ``_json`` to encode.

    Timestamps stay datetimes: orjson writes them as RFC 3339 in UTC with a
    ``Z`` (``2030-01-31T12:00:00Z``, microseconds when there are any).
    """
    return {
        "code": link.code,
        "short_url": f"{public_url}/{link.code}",
        "url": link.url,
        "title": link.title,
        "tags": list(link.tags),
        "redirect_status": link.redirect_status,
        "expires_at": link.expires_at,
        "created_at": link.created_at,
        "updated_at": link.updated_at,
        "clicks": link.clicks,
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        status_code=status,
        media_type="application/json",
    )


async def create_link(request: Request) -> Response:
    """Create a link with a custom or random code."""
    key = await authorize(request, "links:write")
    runtime = _runtime(request)
    fields = parse_create(
        await read_json(request), public_host=runtime.settings.public_host
    )
    creator: LinkCreator = request.app.state.creator
    link = await creator.create(fields, created_by=key.id)
    return _json(render_link(link, runtime.settings.public_url), 201)


async def _live_link(runtime: Runtime, code: str) -> Link:
    link = await runtime.store.get_link(code)
    if link is None:
        raise LinkNotFound(f"code {code!r} not found")
    if link.deleted_at is not None:
        raise LinkGone(f"link {code!r} was deleted")
    return link


async def get_link(request: Request) -> Response:
    """Return one link with its click count."""
    await authorize(request, "links:read")
    runtime = _runtime(request)
    link = await _live_link(runtime, code_param(request))
    return _json(render_link(link, runtime.settings.public_url))


def _page_args(request: Request) -> tuple[int, int | None, str | None]:
    params = request.query_params
    raw = params.get("limit", str(_DEFAULT_PAGE))
    if not is_decimal(raw):
        raise ValidationFailed("limit must be an integer", field="limit")
    limit = int(raw)
    if not 1 <= limit <= _MAX_PAGE:
        raise ValidationFailed(
            f"limit must be between 1 and {_MAX_PAGE}", field="limit"
        )
    cursor = params.get("cursor")
    return limit, decode_cursor(cursor) if cursor else None, tag_param(request)


async def list_links(request: Request) -> Response:
    """List live links newest first, one page per call."""
    await authorize(request, "links:read")
    runtime = _runtime(request)
    limit, before_id, tag = _page_args(request)

    # Ask for one more than the page to learn whether another page follows.
    links = await runtime.store.list_links(
        limit=limit + 1, before_id=before_id, tag=tag
    )
    page = links[:limit]
    more = len(links) > limit
    return _json(
        {
            "items": [render_link(link, runtime.settings.public_url) for link in page],
            "next_cursor": encode_cursor(page[-1].id) if more else None,
        }
    )


async def update_link(request: Request) -> Response:
    """Change a link's destination, title, tags, expiry or status."""
    await authorize(request, "links:write")
    runtime = _runtime(request)
    code = code_param(request)
    changes = parse_patch(
        await read_json(request), public_host=runtime.settings.public_host
    )
    link = (
        await runtime.store.update_link(code, changes)
        if changes
        else await _live_link(runtime, code)
    )
    await runtime.resolver.publish_link(code, link)
    return _json(render_link(link, runtime.settings.public_url))


async def delete_link(request: Request) -> Response:
    """Delete a link: its code answers 410 from now on and is never reused."""
    await authorize(request, "links:write")
    runtime = _runtime(request)
    code = code_param(request)
    link = await runtime.store.delete_link(code)
    await runtime.resolver.publish_link(code, link)
    return Response(status_code=204)


routes = [
    Route("/links", create_link, methods=["POST"]),
    Route("/links", list_links, methods=["GET"]),
    Route("/links/{code}", get_link, methods=["GET"]),
    Route("/links/{code}", update_link, methods=["PATCH"]),
    Route("/links/{code}", delete_link, methods=["DELETE"]),
]
