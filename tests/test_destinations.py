"""Test the destination URL rules and the stored form of accepted URLs."""

from __future__ import annotations

import pytest

from boltlink.destinations import MAX_URL_LENGTH, validate_destination
from boltlink.errors import InvalidUrl

PUBLIC_HOST = "short.example"


def _stored(raw: object, *, public_host: str = PUBLIC_HOST) -> str:
    return validate_destination(raw, public_host=public_host)


def _refusal(raw: object, *, public_host: str = PUBLIC_HOST) -> InvalidUrl:
    with pytest.raises(InvalidUrl) as caught:
        validate_destination(raw, public_host=public_host)
    assert caught.value.code == "invalid_url"
    assert caught.value.field == "url"
    return caught.value


def test_max_url_length_is_at_least_4096() -> None:
    assert MAX_URL_LENGTH == 8192


@pytest.mark.parametrize(
    "raw",
    [
        "https://example.com",
        "http://example.com/",
        "https://example.com/a%2Fb?x=1+2&y=%20#frag",
        "https://example.com/?",
        "https://example.com/#",
        "https://example.com?",
        "https://example.com#",
        "https://example.com/?#",
        "https://example.com//double//slashes/",
        "https://example.com/path;params?q=a%3Db&&r=#frag?with/slash",
        "https://example.com/%zz%E2%82%AC",
        "https://example.com/a\\b",
        "https://example.com/#@evil.example",
        "https://example.com/?next=https://other.example/",
        "https://example.com.",
        "https://example.com:443/x",
        "https://example.com:08080/x",
        "https://sub_domain.example.com/",
        "https://xn--bcher-kva.example/",
        "https://xn--ls8h.la/",
        "http://127.0.0.1/",
        "http://192.168.1.1:65535/x",
        "http://[::1]:8080/x",
        "http://[2001:db8::1]/",
        "http://[::ffff:1.2.3.4]/",
        "https://a.b.c.d.e.example/",
    ],
)
def test_validate_destination_keeps_url_byte_for_byte(raw: str) -> None:
    assert _stored(raw) == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTPS://Example.COM/Path", "https://example.com/Path"),
        ("HtTp://EXAMPLE.com?Q=A#F", "http://example.com?Q=A#F"),
        ("https://Example.COM.:8443/A%2f", "https://example.com.:8443/A%2f"),
        ("http://[2001:DB8::A]:80/X", "http://[2001:db8::a]:80/X"),
        ("HTTPS://XN--BCHER-KVA.Example/", "https://xn--bcher-kva.example/"),
    ],
)
def test_validate_destination_lowers_scheme_and_host(raw: str, expected: str) -> None:
    assert _stored(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "https://bücher.example/ä?q=ü",
            "https://xn--bcher-kva.example/%C3%A4?q=%C3%BC",
        ),
        ("https://BÜCHER.example./", "https://xn--bcher-kva.example./"),
        ("https://bücher。example/", "https://xn--bcher-kva.example/"),
        (
            "https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/",
            "https://example.com/",
        ),
        ("https://faß.de/", "https://xn--fa-hia.de/"),
        ("https://bücher.example:8443", "https://xn--bcher-kva.example:8443"),
    ],
)
def test_validate_destination_converts_idn_host(raw: str, expected: str) -> None:
    assert _stored(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://example.com/€", "https://example.com/%E2%82%AC"),
        ("https://example.com/?q=日本", "https://example.com/?q=%E6%97%A5%E6%9C%AC"),
        ("https://example.com/#ü", "https://example.com/#%C3%BC"),
        ("https://example.com/😀%20+", "https://example.com/%F0%9F%98%80%20+"),
        ("https://example.com/a\u00a0b", "https://example.com/a%C2%A0b"),
    ],
)
def test_validate_destination_percent_encodes_non_ascii(
    raw: str, expected: str
) -> None:
    assert _stored(raw) == expected


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (None, "url must be a string, not NoneType"),
        (b"https://example.com/", "url must be a string, not bytes"),
        (["https://example.com/"], "url must be a string, not list"),
        ("", "url must not be empty"),
    ],
)
def test_validate_destination_refuses_non_text(raw: object, detail: str) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (
            "https://example.com/a b",
            "url contains a space at index 21; encode it as %20",
        ),
        (" https://example.com/", "url contains a space at index 0; encode it as %20"),
        ("https://example.com/ ", "url contains a space at index 20; encode it as %20"),
        ("https://exa mple.com/", "url contains a space at index 11; encode it as %20"),
        ("https://example.com/\n", "url contains control character '\\n' at index 20"),
        ("https://ev\til.com/", "url contains control character '\\t' at index 10"),
        (
            "https://example.com/\r\nX: y",
            "url contains control character '\\r' at index 20",
        ),
        (
            "https://example.com/\x00",
            "url contains control character '\\x00' at index 20",
        ),
        (
            "https://example.com/\x7f",
            "url contains control character '\\x7f' at index 20",
        ),
        (
            "https://example.com/\x1f",
            "url contains control character '\\x1f' at index 20",
        ),
    ],
)
def test_validate_destination_refuses_spaces_and_controls(
    raw: str, detail: str
) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("example.com", "url must be absolute, starting with http:// or https://"),
        ("//example.com/", "url must be absolute, starting with http:// or https://"),
        ("/path", "url must be absolute, starting with http:// or https://"),
        ("://example.com", "url must be absolute, starting with http:// or https://"),
        (
            "1http://example.com",
            "url must be absolute, starting with http:// or https://",
        ),
        ("ftp://example.com/", "url scheme 'ftp' is not allowed; use http or https"),
        (
            "javascript:alert(1)",
            "url scheme 'javascript' is not allowed; use http or https",
        ),
        (
            "JavaScript:alert(1)",
            "url scheme 'javascript' is not allowed; use http or https",
        ),
        ("data:text/html,hi", "url scheme 'data' is not allowed; use http or https"),
        (
            "mailto:a@example.com",
            "url scheme 'mailto' is not allowed; use http or https",
        ),
        (
            "httpss://example.com",
            "url scheme 'httpss' is not allowed; use http or https",
        ),
        (
            "example.com:80/x",
            "url scheme 'example.com' is not allowed; use http or https",
        ),
    ],
)
def test_validate_destination_refuses_other_schemes(raw: str, detail: str) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("https:example.com", "url must have '//' and a host after the scheme"),
        ("https:/example.com", "url must have '//' and a host after the scheme"),
        ("https:", "url must have '//' and a host after the scheme"),
        ("https://", "url must have a host"),
        ("https:///example.com", "url must have a host"),
        ("https://?q=1", "url must have a host"),
        ("https://#f", "url must have a host"),
        ("https://:443/", "url must have a host"),
    ],
)
def test_validate_destination_refuses_missing_host(raw: str, detail: str) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("https:\\\\evil.com", "url must not contain a backslash before the host"),
        ("https:/\\evil.com", "url must not contain a backslash before the host"),
        ("https:\\/evil.com", "url must not contain a backslash before the host"),
        ("https://\\evil.com", "url must not contain a backslash in its host or port"),
        (
            "https://good.com\\@evil.com",
            "url must not contain a backslash in its host or port",
        ),
        ("https://good.com\\x", "url must not contain a backslash in its host or port"),
    ],
)
def test_validate_destination_refuses_backslash_in_authority(
    raw: str, detail: str
) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    "raw",
    [
        "https://paypal.com@evil.com/",
        "https://user:pass@example.com/",
        "https://@example.com/",
        "https://user@example.com:8443/",
        "https://a@b@evil.com/",
        "https://user%40x@example.com/",
    ],
)
def test_validate_destination_refuses_user_info(raw: str) -> None:
    assert _refusal(raw).detail == (
        "url must not contain user info (a name and '@' before the host)"
    )


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("http://example.com:0/", "url port '0' must be a number from 1 to 65535"),
        (
            "http://example.com:65536/",
            "url port '65536' must be a number from 1 to 65535",
        ),
        ("http://example.com:/", "url port '' must be a number from 1 to 65535"),
        (
            "http://example.com:http/",
            "url port 'http' must be a number from 1 to 65535",
        ),
        ("http://example.com:-1/", "url port '-1' must be a number from 1 to 65535"),
        ("http://example.com:+80/", "url port '+80' must be a number from 1 to 65535"),
        (
            "http://example.com:\uff18\uff10/",
            "url port '\uff18\uff10' must be a number from 1 to 65535",
        ),
        (
            "http://example.com:80:80/",
            "url port '80:80' must be a number from 1 to 65535",
        ),
        ("http://[::1]:0/", "url port '0' must be a number from 1 to 65535"),
        ("http://[::1]:/", "url port '' must be a number from 1 to 65535"),
    ],
)
def test_validate_destination_refuses_bad_port(raw: str, detail: str) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("http://[::1/", "url host '[::1' has no closing ']'"),
        ("http://[::1]x/", "url has unexpected text 'x' after the host"),
        ("http://[::g]/", "url host '[::g]' is not a valid IPv6 address"),
        ("http://[1.2.3.4]/", "url host '[1.2.3.4]' is not a valid IPv6 address"),
        ("http://[v1.fe]/", "url host '[v1.fe]' is not a valid IPv6 address"),
        ("http://[]/", "url host '[]' is not a valid IPv6 address"),
        (
            "http://[fe80::1%25eth0]/",
            "url host '[fe80::1%25eth0]' must not carry a zone identifier",
        ),
    ],
)
def test_validate_destination_refuses_bad_ipv6_literal(raw: str, detail: str) -> None:
    assert _refusal(raw).detail == detail


@pytest.mark.parametrize(
    "host",
    [
        "exa%6Dple.com",
        "a..b",
        ".example.com",
        "example.com..",
        "exa!mple.com",
        "exa*mple.com",
        "example.com]",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4),
    ],
)
def test_validate_destination_refuses_bad_host_name(host: str) -> None:
    detail = _refusal(f"https://{host}/").detail

    assert detail.startswith("url host ")
    assert detail.endswith(" is not a valid host name")


@pytest.mark.parametrize("host", ["😀.example", "a\u200db.example", "-ü.example"])
def test_validate_destination_refuses_bad_idn_host(host: str) -> None:
    assert _refusal(f"https://{host}/").detail == (
        f"url host {host!r} is not a valid internationalised domain name"
    )


@pytest.mark.parametrize(
    "host",
    ["127.1", "2130706433", "0x7f.0.0.1", "017.0.0.1", "1.2.3.4.5", "example.123"],
)
def test_validate_destination_refuses_ambiguous_numeric_host(host: str) -> None:
    assert _refusal(f"http://{host}/").detail == (
        f"url host {host!r} ends in a number but is not a dotted-quad IPv4 address"
    )


@pytest.mark.parametrize(
    ("raw", "public_host"),
    [
        ("https://localhost/x", "localhost"),
        ("https://LOCALHOST.:8443/x", "localhost"),
        ("http://localhost:8080", "localhost"),
        (
            "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",
            "localhost",
        ),
        ("https://Short.Example/abc", "short.example"),
        ("https://short.example.:443/abc?x#y", "short.example"),
        ("https://BÜCHER.example/abc", "xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example/abc", "bücher.example"),
        ("http://127.0.0.1:8080/", "127.0.0.1"),
        ("http://[::1]:8080/", "::1"),
        ("http://[0:0::1]/", "::1"),
        ("http://[::1]/", "[::1]"),
        # On loopback every loopback spelling reaches BoltLink itself.
        ("http://localhost:8000/abc", "127.0.0.1"),
        ("http://127.0.0.2/", "localhost"),
        ("https://sub.localhost/", "localhost"),
        ("http://[::1]:8000/", "127.0.0.1"),
        ("http://127.0.0.1/", "app.localhost"),
        ("http://[::ffff:127.0.0.1]/x", "127.0.0.1"),
        ("http://0.0.0.0/x", "127.0.0.1"),
        ("http://[::]/x", "localhost"),
    ],
)
def test_validate_destination_refuses_public_host(raw: str, public_host: str) -> None:
    detail = _refusal(raw, public_host=public_host).detail

    assert detail.endswith("is BoltLink's own host; the link would redirect to itself")


@pytest.mark.parametrize(
    "raw",
    [
        "https://localhost.example/",
        "https://notlocalhost/",
        "https://localhost-2/",
        "http://128.0.0.1/",
        "http://[::2]/",
        "https://example.com/localhost",
        "https://example.com/?u=https://localhost/",
    ],
)
def test_validate_destination_accepts_other_hosts(raw: str) -> None:
    assert _stored(raw, public_host="localhost") == raw


@pytest.mark.parametrize("raw", ["http://localhost:3000/", "http://127.0.0.1/"])
def test_validate_destination_accepts_loopback_for_a_public_host(raw: str) -> None:
    assert _stored(raw, public_host="go.example.com") == raw


def test_validate_destination_accepts_length_at_limit() -> None:
    prefix = "https://example.com/"
    raw = prefix + "a" * (MAX_URL_LENGTH - len(prefix))

    assert len(raw) == MAX_URL_LENGTH
    assert _stored(raw) == raw


def test_validate_destination_refuses_length_over_limit() -> None:
    prefix = "https://example.com/"
    raw = prefix + "a" * (MAX_URL_LENGTH + 1 - len(prefix))

    assert _refusal(raw).detail == (
        "url is 8193 characters long once encoded; the limit is 8192"
    )


def test_validate_destination_counts_length_once_encoded() -> None:
    prefix = "https://example.com/"
    raw = prefix + "a" * (MAX_URL_LENGTH - len(prefix) - 1) + "ä"

    assert len(raw) == MAX_URL_LENGTH
    assert _refusal(raw).detail == (
        "url is 8197 characters long once encoded; the limit is 8192"
    )


@pytest.mark.parametrize(
    ("raw", "max_length", "accepted"),
    [
        ("https://example.com/", 20, True),
        ("https://example.com/", 19, False),
        ("https://bücher.example", 29, True),
        ("https://bücher.example", 28, False),
    ],
)
def test_validate_destination_honours_max_length(
    raw: str, max_length: int, accepted: bool
) -> None:
    if accepted:
        assert validate_destination(raw, public_host="", max_length=max_length)
        return
    with pytest.raises(InvalidUrl):
        validate_destination(raw, public_host="", max_length=max_length)


def test_validate_destination_refuses_unpaired_surrogate() -> None:
    assert _refusal("https://example.com/\ud800").detail == (
        "url contains an unpaired surrogate, which is not text"
    )


def test_validate_destination_clips_long_values_in_messages() -> None:
    detail = _refusal("https://example.com:" + "9" * 5000 + "/").detail

    assert len(detail) < 120
    assert "..." in detail
