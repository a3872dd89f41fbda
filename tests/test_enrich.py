"""Test enrichment: user agents, bots, referrers, languages, IPs, geo, salts."""

from __future__ import annotations

import ipaddress
import random
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from boltlink.clicks import Click
from boltlink.enrich import (
    Enricher,
    GeoIp,
    LocalSalts,
    RedisSalts,
    UserAgentInfo,
    parse_user_agent,
    primary_language,
    referrer_host,
    truncate_ip,
    visitor_hash,
)

UA = UserAgentInfo

# fmt: off
BROWSERS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
     UA("Chrome", "131", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
     UA("Chrome", "131", "Mac OS X", "10", "desktop")),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
     UA("Edge", "131", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
     UA("Firefox", "133", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
     UA("Firefox", "133", "Linux", "", "desktop")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
     UA("Safari", "18", "Mac OS X", "10", "desktop")),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
     UA("Mobile Safari", "18", "iOS", "18", "mobile")),
    ("Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
     UA("Mobile Safari", "18", "iOS", "18", "tablet")),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
     UA("Chrome Mobile iOS", "131", "iOS", "18", "mobile")),
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
     UA("Chrome Mobile", "131", "Android", "10", "mobile")),
    ("Mozilla/5.0 (Android 15; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
     UA("Firefox Mobile", "133", "Android", "15", "mobile")),
    ("Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
     UA("Chrome", "131", "Android", "14", "tablet")),
]

BOTS = [
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
     UA("Slackbot-LinkExpanding", "1", "", "", "bot", True, "preview", "Slackbot")),
    ("Twitterbot/1.0",
     UA("Twitterbot", "1", "", "", "bot", True, "preview", "Twitterbot")),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
     UA("FacebookBot", "1", "", "", "bot", True, "preview", "facebookexternalhit")),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
     UA("Discordbot", "2", "", "", "bot", True, "preview", "Discordbot")),
    ("WhatsApp/2.23.20.0",
     UA("WhatsApp", "2", "", "", "bot", True, "preview", "WhatsApp")),
    ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
     UA("LinkedInBot", "1", "", "", "bot", True, "preview", "LinkedInBot")),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
     UA("Googlebot", "2", "", "", "bot", True, "crawler", "Googlebot")),
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
     UA("Googlebot", "2", "Android", "6", "bot", True, "crawler", "Googlebot")),
    ("curl/8.5.0",
     UA("curl", "8", "", "", "bot", True, "crawler", "curl")),
    ("",
     UA("", "", "", "", "bot", True, "unknown", "")),
]

# Current releases as of late 2026. NOTE: Safari 26 on iOS and iPadOS freezes
# the OS token at 18_6 (as macOS browsers freeze 10_15_7), so the parsed OS
# version is 18 on iOS 26: the user agent no longer says more.
CURRENT_BROWSERS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36",
     UA("Chrome", "143", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36",
     UA("Chrome", "143", "Mac OS X", "10", "desktop")),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36",
     UA("Chrome", "143", "Linux", "", "desktop")),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36 Edg/143.0.0.0",
     UA("Edge", "143", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:146.0) Gecko/20100101 Firefox/146.0",
     UA("Firefox", "146", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:146.0) Gecko/20100101 Firefox/146.0",
     UA("Firefox", "146", "Mac OS X", "10", "desktop")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.0 Safari/605.1.15",
     UA("Safari", "26", "Mac OS X", "10", "desktop")),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36 OPR/126.0.0.0",
     UA("Opera", "126", "Windows", "10", "desktop")),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.0 Mobile/15E148 Safari/604.1",
     UA("Mobile Safari", "26", "iOS", "18", "mobile")),
    ("Mozilla/5.0 (iPad; CPU OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.0 Mobile/15E148 Safari/604.1",
     UA("Mobile Safari", "26", "iOS", "18", "tablet")),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/143.0.7499.92 Mobile/15E148 Safari/604.1",
     UA("Chrome Mobile iOS", "143", "iOS", "18", "mobile")),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/146.0 Mobile/15E148 Safari/605.1.15",
     UA("Firefox iOS", "146", "iOS", "18", "mobile")),
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Mobile Safari/537.36",
     UA("Chrome Mobile", "143", "Android", "10", "mobile")),
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/29.0 Chrome/136.0.0.0 Mobile Safari/537.36",
     UA("Samsung Internet", "29", "Android", "10", "mobile")),
    ("Mozilla/5.0 (Android 16; Mobile; rv:146.0) Gecko/146.0 Firefox/146.0",
     UA("Firefox Mobile", "146", "Android", "16", "mobile")),
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Mobile Safari/537.36 EdgA/143.0.0.0",
     UA("Edge Mobile", "143", "Android", "10", "mobile")),
]

CURRENT_BOTS = [
    ("Slackbot 1.0 (+https://api.slack.com/robots)",
     UA("Slackbot", "1", "", "", "bot", True, "preview", "Slackbot")),
    ("WhatsApp/2.25.21.80 A",
     UA("WhatsApp", "2", "", "", "bot", True, "preview", "WhatsApp")),
    ("WhatsApp/2.25.20.72 i",
     UA("WhatsApp", "2", "", "", "bot", True, "preview", "WhatsApp")),
    ("TelegramBot (like TwitterBot)",
     UA("TelegramBot", "", "", "", "bot", True, "preview", "TelegramBot")),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) Chrome/143.0.7499.0 Safari/537.36",
     UA("Googlebot", "2", "", "", "bot", True, "crawler", "Googlebot")),
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.7499.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
     UA("Googlebot", "2", "Android", "6", "bot", True, "crawler", "Googlebot")),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
     UA("bingbot", "2", "", "", "bot", True, "crawler", "bingbot")),
]
# fmt: on


@pytest.mark.parametrize(("user_agent", "expected"), BROWSERS + BOTS)
def test_parse_user_agent_every_field(user_agent: str, expected: UserAgentInfo) -> None:
    assert parse_user_agent(user_agent) == expected


@pytest.mark.parametrize(("user_agent", "expected"), CURRENT_BROWSERS + CURRENT_BOTS)
def test_parse_user_agent_current_releases_every_field(
    user_agent: str, expected: UserAgentInfo
) -> None:
    assert parse_user_agent(user_agent) == expected


@pytest.mark.parametrize(("user_agent", "_"), BROWSERS + CURRENT_BROWSERS)
def test_parse_user_agent_browsers_are_never_bots(user_agent: str, _: Any) -> None:
    info = parse_user_agent(user_agent)

    assert (info.bot, info.bot_kind, info.bot_name) == (False, "", "")


@pytest.mark.parametrize(
    ("referrer", "host"),
    [
        ("https://www.Google.com/search?q=x", "www.google.com"),
        ("http://t.co/abc", "t.co"),
        ("android-app://com.slack/", "com.slack"),
        ("", ""),
        ("not a url", ""),
        ("http://[::1", ""),
    ],
)
def test_referrer_host(referrer: str, host: str) -> None:
    assert referrer_host(referrer) == host


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("en-US,en;q=0.9", "en"),
        ("de-CH;q=0.8, fr;q=0.9", "fr"),
        ("*;q=0.5, pt-BR", "pt"),
        ("zh-Hant-TW", "zh"),
        ("", ""),
        ("en;q=bad, es;q=0.1", "es"),
    ],
)
def test_primary_language(header: str, language: str) -> None:
    assert primary_language(header) == language


@pytest.mark.parametrize(
    ("ip", "mode", "stored"),
    [
        ("203.0.113.77", "truncate", "203.0.113.0"),
        ("0.0.0.0", "truncate", "0.0.0.0"),
        ("255.255.255.255", "truncate", "255.255.255.0"),
        ("01.2.3.4", "truncate", ""),
        ("256.1.1.1", "truncate", ""),
        ("1.2.3", "truncate", ""),
        ("1.2.3.4.5", "truncate", ""),
        ("1.2.3.4 ", "truncate", ""),
        ("1.2.3.\u0664", "truncate", ""),
        ("1..3.4", "truncate", ""),
        ("2001:db8:abcd:12:1:2:3:4", "truncate", "2001:db8:abcd::"),
        ("::ffff:198.51.100.9", "truncate", "198.51.100.0"),
        ("203.0.113.77", "drop", ""),
        ("garbage", "truncate", ""),
        ("", "truncate", ""),
    ],
)
def test_truncate_ip(ip: str, mode: str, stored: str) -> None:
    assert truncate_ip(ip, mode) == stored


def _ipaddress_cut(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)[0])


def test_truncate_ip_cuts_as_ipaddress_does() -> None:
    chooser = random.Random(4)
    octets = ["0", "7", "00", "01", "010", "99", "100", "199", "249", "255", "256"]
    octets += ["999", "1000", "-1", "+1", " 1", "1 ", "\u0664", "\uff11", "", "a"]
    for _ in range(20_000):
        parts = [
            chooser.choice(octets)
            if chooser.random() < 0.3
            else str(chooser.randint(0, 255))
            for _ in range(chooser.choice([3, 4, 4, 4, 5]))
        ]
        ip = ".".join(parts) + chooser.choice(["", "", "", "\n", "/24", "%eth0"])
        assert truncate_ip(ip, "truncate") == _ipaddress_cut(ip), ip


def test_visitor_hash_depends_on_salt_ip_and_agent() -> None:
    base = visitor_hash(b"salt", "203.0.113.7", "UA")

    assert base == visitor_hash(b"salt", "203.0.113.7", "UA")
    assert base != visitor_hash(b"other", "203.0.113.7", "UA")
    assert base != visitor_hash(b"salt", "203.0.113.8", "UA")
    assert base != visitor_hash(b"salt", "203.0.113.7", "UA2")
    assert 0 <= base < 2**64


@pytest.fixture
def geoip_db(tmp_path: Path) -> Path:
    """Write a tiny MaxMind-format database of two networks."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(
        IPSet(["203.0.113.0/24"]),
        {"country": {"iso_code": "FR"}, "city": {"names": {"en": "Lyon"}}},
    )
    writer.insert_network(
        IPSet(["2001:db8::/32"]), {"registered_country": {"iso_code": "JP"}}
    )
    path = tmp_path / "geo.mmdb"
    writer.to_db_file(str(path))
    return path


def test_geoip_locates_country_and_city(geoip_db: Path) -> None:
    geo = GeoIp(geoip_db)
    try:
        assert geo.locate("203.0.113.9") == ("FR", "Lyon")
        assert geo.locate("2001:db8::1") == ("JP", "")
        assert geo.locate("198.51.100.1") == ("", "")
        assert geo.locate("nonsense") == ("", "")
    finally:
        geo.close()


async def test_enricher_builds_rows_in_column_order(geoip_db: Path) -> None:
    from boltlink.analytics import RAW_COLUMNS

    enricher = Enricher(LocalSalts(), geoip=GeoIp(geoip_db))
    click = Click(
        link_id=3,
        code="abc",
        ts_ms=1_741_500_000_000,
        ip="203.0.113.9",
        user_agent=BROWSERS[0][0],
        referrer="https://news.ycombinator.com/item?id=1",
        accept_language="de-DE,de;q=0.9",
    )
    cdn = Click(
        link_id=3, code="abc", ts_ms=1_741_500_000_000, ip="203.0.113.9", country="us"
    )
    try:
        rows = await enricher.rows("1-0", [click, cdn])
    finally:
        enricher.close()

    row = dict(zip([name for name, _ in RAW_COLUMNS], rows[0], strict=True))
    assert row["event_id"] == "1-0/0"
    assert row["ip"] == "203.0.113.0"
    assert (row["country"], row["city"]) == ("FR", "Lyon")
    assert row["referrer_host"] == "news.ycombinator.com"
    assert (row["browser"], row["os"], row["device"]) == (
        "Chrome",
        "Windows",
        "desktop",
    )
    assert row["language"] == "de"
    assert row["bot"] == 0
    cdn_row = dict(zip([name for name, _ in RAW_COLUMNS], rows[1], strict=True))
    assert (cdn_row["country"], cdn_row["city"]) == ("US", "")
    assert cdn_row["bot"] == 1


async def test_enricher_drops_ip_when_told() -> None:
    rows = await Enricher(LocalSalts(), ip_storage="drop").rows(
        "1-0", [Click(1, "c", 0, ip="203.0.113.9")]
    )

    assert rows[0][4] == ""


@pytest.mark.redis
async def test_redis_salts_shared_and_expiring(
    redis_client: Any, redis_prefix: str
) -> None:
    first = RedisSalts(redis_client, redis_prefix)
    second = RedisSalts(redis_client, redis_prefix)
    day = date(2025, 3, 9)

    salt = await first.salt_for(day)
    assert salt == await second.salt_for(day)
    assert salt != await first.salt_for(date(2025, 3, 10))
    key = f"{redis_prefix}salt:2025-03-09"
    assert 0 < await redis_client.ttl(key) <= 2 * 86_400
