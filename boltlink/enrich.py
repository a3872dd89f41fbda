"""Turn a recorded click into an analytics row: parse, classify, anonymise.

Every field is derived here, once, at ingest time:

- browser, OS and device type from the user agent (``ua-parser``);
- bot, crawler and link-preview detection from the user agent
  (``crawlerdetect``'s maintained list, plus ua-parser's ``Spider`` device);
- the referrer's host, and the primary language of ``Accept-Language``;
- country and city from a MaxMind-format database when one is configured,
  unless the redirect side already took the country from a trusted CDN
  header;
- a unique-visitor hash of IP and user agent under a salt that rotates
  daily and lives only in Redis, never beside the data; then the IP itself
  is truncated (/24 for IPv4, /48 for IPv6) or dropped.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from boltlink.analytics.schema import RAW_COLUMNS
from boltlink.clicks import Click

__all__ = [
    "Enricher",
    "GeoIp",
    "LocalSalts",
    "RedisSalts",
    "UserAgentInfo",
    "parse_user_agent",
    "primary_language",
    "referrer_host",
    "truncate_ip",
    "visitor_hash",
]

# Link-preview fetchers: a chat or social app unfurling a pasted link, not
# a person and not a search crawler. Matched on the lower-case bot name.
_PREVIEW_BOTS = (
    "slack",
    "twitterbot",
    "facebookexternalhit",
    "facebookcatalog",
    "discordbot",
    "whatsapp",
    "linkedinbot",
    "telegrambot",
    "skypeuripreview",
    "redditbot",
    "embedly",
    "iframely",
    "pinterest",
    "mastodon",
    "bluesky",
    "viber",
    "snapchat",
    "vkshare",
    "mattermost",
)
_DESKTOP_OSES = frozenset(
    {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "FreeBSD"}
)
_MOBILE_OSES = frozenset({"iOS", "Android", "iPadOS"})
_SALT_TTL_SECONDS = 2 * 86_400
_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_DAYS_KEPT = 5


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What a user agent string says about the client."""

    browser: str = ""
    browser_version: str = ""
    os: str = ""
    os_version: str = ""
    device: str = "other"
    bot: bool = False
    bot_kind: str = ""
    bot_name: str = ""


@functools.cache
def _crawler_detect() -> Any:
    from crawlerdetect import CrawlerDetect

    return CrawlerDetect()


@functools.lru_cache(maxsize=4096)
def parse_user_agent(user_agent: str) -> UserAgentInfo:
    """Parse ``user_agent``: browser, OS, device type and bot class."""
    from ua_parser import parse

    if not user_agent.strip():
        # Browsers always send one; a bare HTTP client or a prefetcher may not.
        return UserAgentInfo(device="bot", bot=True, bot_kind="unknown")
    result = parse(user_agent)
    agent, os_, device = result.user_agent, result.os, result.device
    browser = agent.family if agent and agent.family != "Other" else ""
    os_name = os_.family if os_ and os_.family != "Other" else ""
    info = UserAgentInfo(
        browser=browser,
        browser_version=(agent.major or "") if agent and browser else "",
        os=os_name,
        os_version=(os_.major or "") if os_ and os_name else "",
    )

    bot_name = _bot_name(user_agent, browser, device.family if device else "")
    if bot_name:
        kind = "preview" if _is_preview(bot_name, user_agent) else "crawler"
        return _replace(info, device="bot", bot=True, bot_kind=kind, bot_name=bot_name)
    return _replace(info, device=_device_type(user_agent, os_name, device))


def _replace(info: UserAgentInfo, **changes: Any) -> UserAgentInfo:
    fields = {name: getattr(info, name) for name in UserAgentInfo.__slots__}
    return UserAgentInfo(**{**fields, **changes})


def _bot_name(user_agent: str, browser: str, device_family: str) -> str:
    detector = _crawler_detect()
    if detector.isCrawler(user_agent):
        return str(detector.getMatches() or browser or "bot")
    if device_family == "Spider":
        return browser or "bot"
    return ""


def _is_preview(bot_name: str, user_agent: str) -> bool:
    lowered = f"{bot_name} {user_agent}".lower()
    return any(token in lowered for token in _PREVIEW_BOTS)


def _device_type(user_agent: str, os_name: str, device: Any) -> str:
    family = device.family if device else ""
    brand = (device.brand or "") if device else ""
    if family == "iPad" or "Tablet" in brand or "Tablet" in user_agent:
        return "tablet"
    # Android browsers leave "Mobile" out on tablets (Chrome's UA rules).
    if os_name == "Android" and "Mobile" not in user_agent:
        return "tablet"
    if os_name in _MOBILE_OSES or "Mobile" in user_agent:
        return "mobile"
    if os_name in _DESKTOP_OSES:
        return "desktop"
    return "other"


def referrer_host(referrer: str) -> str:
    """Return the lower-case host of a referrer URL, '' if it has none."""
    try:
        host = urlsplit(referrer.strip()).hostname or ""
    except ValueError:
        return ""
    return host.rstrip(".")[:253]


def primary_language(accept_language: str) -> str:
    """Return the primary subtag of the most preferred language, e.g. 'en'."""
    best, best_q = "", 0.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        # RFC 9110 section 12.5.4: the first of equal weights wins.
        primary = tag.strip().split("-")[0].lower()
        if primary.isalpha() and len(primary) <= 8 and q > best_q:
            best, best_q = primary, q
    return best


# ipaddress's rules for an octet: 0 to 255 in 1 to 3 ASCII digits, no
# leading zero.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_QUAD = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
# Referrers and Accept-Language headers repeat from click to click: ingest
# derives each distinct value once.
_referrer_host = functools.lru_cache(maxsize=4096)(referrer_host)
_primary_language = functools.lru_cache(maxsize=1024)(primary_language)


@functools.lru_cache(maxsize=4096)
def _agent_columns(user_agent: str) -> tuple[Any, ...]:
    # browser, browser_version, os, os_version, device, then bot (0 or 1),
    # bot_kind, bot_name: the raw table's columns around `language`.
    info = parse_user_agent(user_agent)
    return (
        info.browser,
        info.browser_version,
        info.os,
        info.os_version,
        info.device,
        int(info.bot),
        info.bot_kind,
        info.bot_name,
    )


def truncate_ip(ip: str, mode: str) -> str:
    """Return ``ip`` cut to its /24 (IPv4) or /48 (IPv6), or '' to drop it."""
    if mode == "drop" or not ip:
        return ""
    # Most clicks come from dotted-quad IPv4: cut it as text, which ingest
    # does for every row, and leave every other form to ipaddress.
    if _DOTTED_QUAD.fullmatch(ip):
        return f"{ip[: ip.rindex('.')]}.0"
    return _truncate_other(ip)


def _truncate_other(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network.network_address)


def visitor_hash(salt: bytes, ip: str, user_agent: str) -> int:
    """Return the unique-visitor hash of one IP and user agent under ``salt``."""
    digest = hashlib.blake2b(salt, digest_size=8)
    digest.update(ip.encode() + b"\0" + user_agent.encode())
    return int.from_bytes(digest.digest(), "big")


class RedisSalts:
    """Keep one random salt per UTC day in Redis, shared by every process.

    The first process to need a day's salt creates it (``SET NX``); the key
    expires after two days, so a visitor hash cannot be recomputed later.
    """

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._cache: dict[date, bytes] = {}

    async def salt_for(self, day: date) -> bytes:
        """Return the salt of ``day``, creating it on first use."""
        if day in self._cache:
            return self._cache[day]
        key = f"{self._prefix}salt:{day.isoformat()}"
        candidate = secrets.token_hex(16)
        await self._redis.set(key, candidate, nx=True, ex=_SALT_TTL_SECONDS)
        stored = await self._redis.get(key)
        if stored is None:
            stored = candidate
        salt = stored if isinstance(stored, bytes) else str(stored).encode()
        if len(self._cache) > 4:
            self._cache.pop(min(self._cache))
        self._cache[day] = salt
        return salt


class LocalSalts:
    """Keep daily salts in this process only (one ingest process, or tests)."""

    def __init__(self) -> None:
        self._salts: dict[date, bytes] = {}

    async def salt_for(self, day: date) -> bytes:
        """Return the salt of ``day``, creating it on first use."""
        if len(self._salts) > 4 and day not in self._salts:
            self._salts.pop(min(self._salts))
        return self._salts.setdefault(day, secrets.token_bytes(16))


class GeoIp:
    """Look up country and city in a MaxMind-format (.mmdb) database."""

    def __init__(self, path: Path) -> None:
        import maxminddb

        self._reader = maxminddb.open_database(str(path))

    @functools.lru_cache(maxsize=65_536)  # noqa: B019 - one reader per process
    def locate(self, ip: str) -> tuple[str, str]:
        """Return (ISO country code, English city name), '' where unknown."""
        try:
            record = self._reader.get(ip)
        except ValueError:
            return "", ""
        if not isinstance(record, dict):
            return "", ""
        country = _field(record, "country") or _field(record, "registered_country")
        city = _field(_field(_field(record, "city"), "names"), "en")
        return str(_field(country, "iso_code") or ""), str(city or "")

    def close(self) -> None:
        """Close the database file."""
        self._reader.close()


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else None


class Enricher:
    """Build raw analytics rows from clicks, in ``RAW_COLUMNS`` order.

    A row holds the click's time as epoch milliseconds (an ``int``), which
    the analytics store writes as the ``DateTime64(3)`` it is.
    """

    def __init__(
        self,
        salts: RedisSalts | LocalSalts,
        *,
        ip_storage: str = "truncate",
        geoip: GeoIp | None = None,
    ) -> None:
        self._salts = salts
        self._ip_storage = ip_storage
        self._geoip = geoip
        # Per UTC day number, a hash already fed that day's salt: a click
        # copies it instead of asking for the salt and starting over.
        self._hashers: dict[int, Any] = {}

    async def rows(self, entry_id: str, clicks: list[Click]) -> list[list[Any]]:
        """Return one row per click of one stream entry."""
        return await self.block_rows([(entry_id, clicks)])

    async def block_rows(
        self, entries: Sequence[tuple[str, list[Click]]]
    ) -> list[list[Any]]:
        """Return one row per click of each ``(event source, clicks)`` entry."""
        columns = await self.block_columns(entries)
        return [list(row) for row in zip(*columns, strict=True)]

    async def block_columns(
        self, entries: Sequence[tuple[str, list[Click]]]
    ) -> list[Sequence[Any]]:
        """Return the rows of :meth:`block_rows` as columns, one sequence each.

        Column by column, each derived value is one call over the whole
        block rather than a row assembled per click: ingest builds every
        block this way, so a click costs a few list slots instead of a list
        of its own.
        """
        await self._load_salts(entries)
        clicks = [click for _, group in entries for click in group]
        if not clicks:
            return [[] for _ in RAW_COLUMNS]
        ips = [click.ip for click in clicks]
        agents = [click.user_agent for click in clicks]
        referrers = [click.referrer for click in clicks]
        languages = [click.accept_language for click in clicks]
        countries, cities = self._places(clicks)
        # browser, browser_version, os, os_version, device, bot, bot_kind,
        # bot_name: _agent_columns's order.
        parsed = list(zip(*map(_agent_columns, agents), strict=True))
        mode = self._ip_storage
        return [
            [f"{source}/{n}" for source, group in entries for n in range(len(group))],
            [click.link_id for click in clicks],
            [click.code for click in clicks],
            [click.ts_ms for click in clicks],
            [truncate_ip(ip, mode) for ip in ips],
            agents,
            referrers,
            languages,
            countries,
            cities,
            list(map(_referrer_host, referrers)),
            *parsed[:5],
            list(map(_primary_language, languages)),
            *parsed[5:],
            self._visitors(clicks),
        ]

    async def _load_salts(self, entries: Sequence[tuple[str, list[Click]]]) -> None:
        days = {c.ts_ms // _DAY_MS for _, clicks in entries for c in clicks}
        for day in sorted(days.difference(self._hashers)):
            salt = await self._salts.salt_for(_EPOCH + timedelta(days=day))
            # The salt is the start of the hashed message (visitor_hash).
            self._hashers[day] = hashlib.blake2b(salt, digest_size=8)
        # Forget the oldest days, never one this batch needs.
        for day in sorted(self._hashers.keys() - days):
            if len(self._hashers) <= _DAYS_KEPT:
                break
            del self._hashers[day]

    def _places(self, clicks: list[Click]) -> tuple[list[str], list[str]]:
        """Return the country and the city columns."""
        countries = [click.country.upper()[:2] for click in clicks]
        if self._geoip is None:
            return countries, [""] * len(clicks)
        cities = []
        locate = self._geoip.locate
        for n, click in enumerate(clicks):
            country, city = countries[n], ""
            if click.ip:
                geo_country, geo_city = locate(click.ip)
                # A trusted CDN header wins; the city only when both agree.
                city = geo_city if country in ("", geo_country) else ""
                countries[n] = country or geo_country
            cities.append(city)
        return countries, cities

    def _visitors(self, clicks: list[Click]) -> list[int]:
        """Return the visitor hash column (:func:`visitor_hash`, salt per day)."""
        hashers = self._hashers
        visitors = []
        for click in clicks:
            digest = hashers[click.ts_ms // _DAY_MS].copy()
            digest.update(f"{click.ip}\0{click.user_agent}".encode())
            visitors.append(int.from_bytes(digest.digest(), "big"))
        return visitors

    def close(self) -> None:
        """Close the GeoIP database, if one is open."""
        if self._geoip is not None:
            self._geoip.close()
