"""Define BoltLink's exceptions, one small tree.

::

    BoltLinkError
    ├── ConfigError            bad settings; the CLI prints one line, exit 1
    ├── BackendUnavailable     a store, Redis or ClickHouse cannot be reached
    └── ApiError               carries an HTTP status and a stable ``code``
        ├── InvalidJson        a request body is not one JSON object
        ├── PayloadTooLarge    a request body is larger than the limit
        ├── UnsupportedMedia   a request body is sent as something but JSON
        ├── ValidationFailed   a request body or parameter is malformed
        │   ├── InvalidUrl     a destination breaks the URL rules
        │   └── InvalidCode    a custom code breaks the code rules
        ├── ReservedCode       a custom code collides with a route of the app
        ├── CodeTaken          a custom code is already in use
        ├── LinkNotFound       no link has this code
        ├── LinkGone           the link was deleted or has expired
        ├── Unauthorized       no API key, or an unknown or revoked one
        └── Forbidden          the key lacks the scope the route needs

The app turns every :class:`ApiError` into a JSON problem document
(RFC 9457) in one handler; views only raise.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BackendUnavailable",
    "BoltLinkError",
    "CodeTaken",
    "ConfigError",
    "Forbidden",
    "InvalidCode",
    "InvalidJson",
    "InvalidUrl",
    "LinkGone",
    "LinkNotFound",
    "PayloadTooLarge",
    "ReservedCode",
    "Unauthorized",
    "UnsupportedMedia",
    "ValidationFailed",
]


class BoltLinkError(Exception):
    """Base of every error BoltLink raises on purpose."""


class ConfigError(BoltLinkError):
    """Raised when a setting is missing, malformed or contradicts another."""


class BackendUnavailable(BoltLinkError):
    """Raised when a link store, Redis or ClickHouse cannot be reached."""


class ApiError(BoltLinkError):
    """Base of errors that become a problem document with a stable code."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidJson(ApiError):
    """Raised when a request body is not one JSON object."""

    status = 400
    code = "invalid_json"
    title = "Invalid JSON"


class PayloadTooLarge(ApiError):
    """Raised when a request body is larger than the API accepts."""

    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class BodyTimeout(ApiError):
    """Raised when a request body does not arrive in time."""

    status = 408
    code = "request_timeout"
    title = "Request timeout"


class ClientGone(ApiError):
    """Raised when the client hangs up before it has sent the whole body.

    Nothing is stored, and the answer reaches no one; 499 (nginx's "client
    closed request") keeps it apart from the server's own errors in the
    logs and metrics.
    """

    status = 499
    code = "client_closed_request"
    title = "Client closed request"


class UnsupportedMedia(ApiError):
    """Raised when a request body's content type is not JSON."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class ValidationFailed(ApiError):
    """Raised when a request body or parameter is malformed."""

    status = 422
    code = "validation_error"
    title = "Invalid request"


class InvalidUrl(ValidationFailed):
    """Raised when a destination URL breaks the destination rules."""

    code = "invalid_url"
    title = "Invalid destination URL"


class InvalidCode(ValidationFailed):
    """Raised when a custom code breaks the charset or length rules."""

    code = "invalid_code"
    title = "Invalid short code"


class ReservedCode(ApiError):
    """Raised when a custom code names a route of the app."""

    status = 422
    code = "reserved_code"
    title = "Reserved short code"


class CodeTaken(ApiError):
    """Raised when a custom code is already used by another link."""

    status = 409
    code = "code_taken"
    title = "Short code already taken"


class LinkNotFound(ApiError):
    """Raised when no link has the requested code."""

    status = 404
    code = "not_found"
    title = "Not found"


class LinkGone(ApiError):
    """Raised when the link was deleted or has expired."""

    status = 410
    code = "gone"
    title = "Link gone"


class Unauthorized(ApiError):
    """Raised when no API key was sent, or the key is unknown or revoked."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(ApiError):
    """Raised when the API key lacks the scope the route needs."""

    status = 403
    code = "forbidden"
    title = "Forbidden"
