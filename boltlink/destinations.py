"""Validate destination URLs and put them in the form BoltLink stores.

A destination is stored as the user sent it, with three exceptions: the scheme
is lower-cased, the host is lower-cased and converted to punycode (IDNA with
UTS 46 mapping), and non-ASCII characters in the path, query and fragment are
percent-encoded as UTF-8. Everything else is kept byte for byte: percent-escapes
(``%2F``, ``%20``), ``+``, an empty query ``?`` and an empty fragment ``#``. The
stored URL is what a redirect sends back in its ``Location`` header.

Besides the shape of the URL, the rules refuse what a browser would read
differently from us (a backslash in the authority, a numeric host that is not
a plain dotted quad), what hides the real host from a reader (user info, as in
``https://bank.example@evil.example``) and a link back to BoltLink itself.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import idna

from boltlink.errors import InvalidUrl

__all__ = ["MAX_URL_LENGTH", "validate_destination"]

MAX_URL_LENGTH = 8192
"""Longest destination accepted, in characters of the stored form."""

_SCHEMES = frozenset({"http", "https"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")
# C0 controls, space, DEL and the C1 controls (U+0080 to U+009F).
_RAW_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f]")
_AUTHORITY_END = re.compile(r"[/?#]|\Z")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_PORT = re.compile(r"0*[0-9]{1,5}")
# WHATWG URL "ends in a number": a host whose last label is decimal or 0x-hex
# is parsed as IPv4 by browsers, so "127.1" and "0x7f.0.0.1" mean 127.0.0.1.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
_MAX_HOST_LENGTH = 253


def validate_destination(
    raw: object, *, public_host: str, max_length: int = MAX_URL_LENGTH
) -> str:
    """Check ``raw`` against the destination rules and return the URL to store.

    ``public_host`` is BoltLink's own public host name; a destination on it
    would redirect to itself. Raise :class:`~boltlink.errors.InvalidUrl`
    naming the first rule that ``raw`` breaks.
    """
    text = _require_text(raw)
    _refuse_raw_characters(text)
    scheme, rest = _split_scheme(text)
    authority, tail = _split_authority(rest)
    host, port = _split_host_port(authority)
    host = _normalise_host(host)
    _refuse_self_link(host, public_host)

    url = f"{scheme}://{host}{port}{_encode_non_ascii(tail)}"
    if len(url) > max_length:
        raise _invalid(
            f"url is {len(url)} characters long once encoded; the limit is {max_length}"
        )
    return url


def _invalid(detail: str) -> InvalidUrl:
    return InvalidUrl(detail, field="url")


def _clip(text: str, limit: int = 64) -> str:
    """Return ``text`` cut to ``limit`` characters, for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_text(raw: object) -> str:
    if not isinstance(raw, str):
        raise _invalid(f"url must be a string, not {type(raw).__name__}")
    if not raw:
        raise _invalid("url must not be empty")
    return raw


def _refuse_raw_characters(text: str) -> None:
    """Refuse spaces and control characters, which ``Location`` cannot carry."""
    # NOTE: browsers silently drop tabs and newlines from URLs (WHATWG URL),
    # so "https://ev\til.example" would not even name the host it shows.
    found = _RAW_FORBIDDEN.search(text)
    if found is None:
        return
    if found.group() == " ":
        raise _invalid(
            f"url contains a space at index {found.start()}; encode it as %20"
        )
    raise _invalid(
        f"url contains control character {found.group()!r} at index {found.start()}"
    )


def _split_scheme(text: str) -> tuple[str, str]:
    """Return the lower-cased scheme and the text after its colon."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise _invalid("url must be absolute, starting with http:// or https://")

    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise _invalid(f"url scheme {scheme!r} is not allowed; use http or https")
    return scheme, rest


def _split_authority(rest: str) -> tuple[str, str]:
    """Return the authority after ``//`` and the path, query and fragment."""
    # Browsers read "\" as "/" in http(s) URLs and end the authority there,
    # while RFC 3986 parsers keep it; refuse it rather than guess which host.
    if "\\" in rest[:2]:
        raise _invalid("url must not contain a backslash before the host")
    if not rest.startswith("//"):
        raise _invalid("url must have '//' and a host after the scheme")

    end = _AUTHORITY_END.search(rest, 2)
    assert end is not None, "the pattern matches at the end of any text"
    authority, tail = rest[2 : end.start()], rest[end.start() :]
    if "\\" in authority:
        raise _invalid("url must not contain a backslash in its host or port")

    # User info lets "https://bank.example@evil.example" show one host and
    # open another; no destination needs it in a public link.
    if "@" in authority:
        raise _invalid(
            "url must not contain user info (a name and '@' before the host)"
        )
    if not authority:
        raise _invalid("url must have a host")
    return authority, tail


def _split_host_port(authority: str) -> tuple[str, str]:
    """Return the host and the port with its colon, or an empty string."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _invalid(f"url host {_clip(authority)!r} has no closing ']'")
        host, after = authority[: close + 1], authority[close + 1 :]
    else:
        host, colon, port = authority.partition(":")
        after = colon + port

    if not host:
        raise _invalid("url must have a host")
    if after and not after.startswith(":"):
        raise _invalid(f"url has unexpected text {_clip(after)!r} after the host")
    if after:
        _check_port(after[1:])
    return host, after


def _check_port(port: str) -> None:
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise _invalid(f"url port {_clip(port)!r} must be a number from 1 to 65535")


def _normalise_host(host: str) -> str:
    """Return ``host`` lower-cased, in punycode, once it is known to be valid."""
    if host.startswith("["):
        return _ipv6_literal(host)
    if not host.isascii():
        host = _to_punycode(host)

    host = host.lower()
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > _MAX_HOST_LENGTH or not all(map(_LABEL.fullmatch, labels)):
        raise _invalid(f"url host {_clip(host)!r} is not a valid host name")
    for label in labels:
        if label.startswith("xn--"):
            _check_a_label(host, label)
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        _check_ipv4(name)
    return host


def _ipv6_literal(host: str) -> str:
    address = host[1:-1].lower()
    # NOTE: zone identifiers ("[fe80::1%25eth0]") name an interface of the
    # visitor's own machine, never a useful destination.
    if "%" in address:
        raise _invalid(f"url host {_clip(host)!r} must not carry a zone identifier")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise _invalid(
            f"url host {_clip(host)!r} is not a valid IPv6 address"
        ) from None
    return f"[{address}]"


def _to_punycode(host: str) -> str:
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise _invalid(
            f"url host {_clip(host)!r} is not a valid internationalised domain name"
        ) from exc


def _check_a_label(host: str, label: str) -> None:
    """Refuse a punycode label that does not encode a name of printable text.

    A host given in ASCII skips the conversion above, so ``xn--a`` (which
    decodes to a control character), ``xn--`` or ``xn--zz-`` (which decode
    to nothing or to plain ASCII) would be stored, and no browser opens
    them. A label IDNA 2008 accepts passes (joiners in Persian or Sinhala
    names included); so does one it leaves out but registries sell, such
    as emoji (``xn--ls8h.la``), unless it holds a control, format, private
    use or separator character.
    """
    encoded = label[4:]
    try:
        name = encoded.encode("ascii").decode("punycode")
        valid = (
            not name.isascii()
            and name.encode("punycode").decode("ascii") == encoded
            and (_idna_label(name) or not any(map(_unprintable, name)))
        )
    except UnicodeError:
        valid = False
    if not valid:
        raise _invalid(
            f"url host {_clip(host)!r} is not a valid internationalised domain name"
        )


def _idna_label(name: str) -> bool:
    try:
        idna.encode(name)
    except idna.IDNAError:
        return False
    return True


def _unprintable(char: str) -> bool:
    # Unassigned (Cn) is left out: an emoji newer than this Python is one.
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zs", "Zl", "Zp")


def _check_ipv4(name: str) -> None:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        raise _invalid(
            f"url host {_clip(name)!r} ends in a number but is not a dotted-quad "
            f"IPv4 address"
        ) from None


def _refuse_self_link(host: str, public_host: str) -> None:
    # A BoltLink served on loopback is reached by every loopback spelling
    # (localhost, 127.0.0.1, 127.1.2.3, ::1), so all of them are its own.
    own, other = _host_key(public_host), _host_key(host)
    if own == other or (_is_loopback(own) and _is_loopback(other)):
        raise _invalid(
            f"url host {_clip(host)!r} is BoltLink's own host; "
            f"the link would redirect to itself"
        )


def _is_loopback(key: str) -> bool:
    if key == "localhost" or key.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(key)
    except ValueError:
        return False
    # ::ffff:127.0.0.1 is IPv4 loopback; 0.0.0.0 and :: reach the local host.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _host_key(host: str) -> str:
    """Return ``host`` in the one form that every spelling of it shares."""
    host = host.lower().removesuffix(".").removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass

    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        return host


def _encode_non_ascii(tail: str) -> str:
    """Percent-encode non-ASCII runs of the path, query and fragment as UTF-8."""
    try:
        return _NON_ASCII.sub(_percent_encode, tail)
    except UnicodeEncodeError as exc:
        raise _invalid("url contains an unpaired surrogate, which is not text") from exc


def _percent_encode(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))
