"""Build the one settings object from ``BOLTLINK_*`` variables and CLI options.

This is the only module that reads the environment. Every other module takes
a :class:`Settings` instance. Values are cast and checked here so a bad
setting stops start-up with one line instead of failing on first use.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from boltlink.errors import ConfigError

__all__ = ["Secret", "Settings", "export_to_environ", "unknown_variables"]

_PREFIX = "BOLTLINK_"


class Secret(str):
    """Hold a DSN or secret whose repr hides any password it carries."""

    def __repr__(self) -> str:
        parts = urlsplit(str(self))
        if parts.password is None:
            return f"Secret({str(self)!r})"
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username}:***@{host}"
        return f"Secret({urlunsplit(parts._replace(netloc=netloc))!r})"

    def __str__(self) -> str:
        return str.__str__(self)


def _cast_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be a boolean (true or false), got {raw!r}")


def _cast_int(name: str, raw: str, low: int, high: int) -> int:
    # int() would also take " 80", "8_0" and non-ASCII digits.
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise ConfigError(f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _cast_float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _check_url(name: str, raw: str, schemes: tuple[str, ...]) -> Secret:
    scheme = raw.split(":", 1)[0].lower() if ":" in raw else ""
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        shown = repr(Secret(raw))[7:-1]
        raise ConfigError(f"{name} must start with one of {allowed}, got {shown}")
    return Secret(raw)


def _public_host_of(listen: str) -> str:
    """Return the host of the default public URL for a listen address."""
    address = listen.strip("[]")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return listen
    if parsed.is_unspecified:
        return "localhost"
    if parsed.version == 6:
        # In brackets, a zone's "%" written %25 (RFC 3986, RFC 6874).
        return f"[{address.replace('%', '%25')}]"
    return address


def _check_public_url(raw: str) -> str:
    not_absolute = ConfigError(
        f"BOLTLINK_PUBLIC_URL must be an absolute http(s) URL, got {raw!r}"
    )
    try:
        parts = urlsplit(raw)
        _ = parts.port
    except ValueError:
        raise not_absolute from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise not_absolute
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"BOLTLINK_PUBLIC_URL must not carry user info, got {raw!r}")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"BOLTLINK_PUBLIC_URL must not carry a query or fragment, got {raw!r}"
        )
    return raw.rstrip("/")


_DATABASE_SCHEMES = ("postgresql", "postgres", "sqlite")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_CLICKHOUSE_SCHEMES = ("http", "https", "chdb")


@dataclass(frozen=True)
class Settings:
    """Hold every setting of one BoltLink process, cast and checked."""

    data_dir: Path = Path("./boltlink-data")
    database_url: Secret | None = None
    redis_url: Secret | None = None
    clickhouse_url: Secret | None = None
    public_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    database_schema: str = "public"
    database_pool_size: int = 10
    redis_prefix: str = "boltlink:"
    stream_partitions: int = 1
    stream_maxlen: int = 1_000_000
    cache_size: int = 100_000
    cache_ttl: float = 5.0
    negative_cache_ttl: float = 30.0
    click_buffer_size: int = 100_000
    batch_size: int = 500
    # Ingest pays a fixed cost per ClickHouse insert (the views and the
    # projection), so it reads larger batches than aggregate.
    ingest_batch_size: int = 2000
    block_ms: int = 1000
    # After a read that did not fill a batch, a consumer waits this long
    # before the next, so that a trickle is written in a few larger batches
    # (one Postgres transaction, one ClickHouse insert each) rather than one
    # per entry. A full batch is followed at once.
    linger_ms: int = 100
    ingest_linger_ms: int = 500
    consumers: int = 1
    claim_interval: float = 5.0
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    shutdown_timeout: float = 10.0
    trim_interval: float = 10.0
    inprocess_workers: bool = True
    clicks_ttl_days: int = 0
    clickhouse_cluster: str = ""
    geoip_db: Path | None = None
    ip_storage: str = "truncate"
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = True
    access_log_probes: bool = False
    tracing: bool = False
    metrics_port: int = 0
    # prometheus_client's multiprocess folder (PROMETHEUS_MULTIPROC_DIR),
    # made by `boltlink serve` for its workers.
    metrics_dir: Path | None = None
    # Set by `boltlink serve` for its workers when it runs the embedded Valkey.
    embedded_redis_url: Secret | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Read ``BOLTLINK_*`` variables, then apply CLI overrides on top.

        Overrides whose value is ``None`` are ignored, so CLI options that
        were not given fall back to the environment and the defaults.
        """
        env = os.environ if environ is None else environ
        raw = {
            f.name: env[_PREFIX + f.name.upper()]
            for f in dataclasses.fields(cls)
            if _PREFIX + f.name.upper() in env
        }
        if "metrics_dir" not in raw and env.get("PROMETHEUS_MULTIPROC_DIR"):
            raw["metrics_dir"] = env["PROMETHEUS_MULTIPROC_DIR"]
        raw.update({k: str(v) for k, v in overrides.items() if v is not None})
        return cls._cast(raw)

    @classmethod
    def _cast(cls, raw: dict[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for key, value in raw.items():
            values[key] = _cast_one(key, value)

        # Separate aggregate and ingest processes only make sense when every
        # backend is a server they can all reach; otherwise serve runs them.
        if "inprocess_workers" not in values:
            values["inprocess_workers"] = not (
                values.get("redis_url")
                and values.get("clickhouse_url")
                and not str(values["clickhouse_url"]).startswith("chdb:")
            )
        settings = cls(**values)
        if not settings.public_url:
            host = _public_host_of(settings.host)
            base = f"http://{host}:{settings.port}"
            settings = dataclasses.replace(settings, public_url=base)
        return settings

    @property
    def database_dsn(self) -> str:
        """Return the link store's DSN: Postgres when set, else SQLite."""
        if self.database_url:
            return str(self.database_url)
        return f"sqlite:///{self.data_dir.resolve() / 'boltlink.sqlite3'}"

    @property
    def clickhouse_dsn(self) -> str:
        """Return the analytics DSN: a ClickHouse server when set, else chDB."""
        if self.clickhouse_url:
            return str(self.clickhouse_url)
        return f"chdb://{self.data_dir.resolve() / 'chdb'}"

    @property
    def profile(self) -> str:
        """Name the profile: embedded, production, or mixed."""
        servers = [
            self.database_url is not None,
            self.redis_url is not None,
            self.clickhouse_url is not None
            and not str(self.clickhouse_url).startswith("chdb:"),
        ]
        if all(servers):
            return "production"
        return "mixed" if any(servers) else "embedded"

    @property
    def uses_embedded_redis(self) -> bool:
        """Tell whether this process needs the embedded Valkey server."""
        return self.redis_url is None

    @property
    def public_host(self) -> str:
        """Return the lower-case host name of the public URL, no trailing dot."""
        return (urlsplit(self.public_url).hostname or "").rstrip(".").lower()

    def to_env(self) -> dict[str, str]:
        """Render these settings as ``BOLTLINK_*`` variables for child processes."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[_PREFIX + f.name.upper()] = str(value)
        return env


_INT_LIMITS: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "workers": (1, 256),
    "database_pool_size": (1, 1000),
    "stream_partitions": (1, 1024),
    "stream_maxlen": (1000, 1_000_000_000),
    "cache_size": (0, 100_000_000),
    "click_buffer_size": (0, 100_000_000),
    "batch_size": (1, 100_000),
    "ingest_batch_size": (1, 100_000),
    "block_ms": (1, 60_000),
    "linger_ms": (0, 60_000),
    "ingest_linger_ms": (0, 60_000),
    "consumers": (1, 64),
    "claim_idle_ms": (10, 86_400_000),
    "max_deliveries": (1, 1000),
    "clicks_ttl_days": (0, 36_500),
    "metrics_port": (0, 65535),
}
_FLOAT_LIMITS: dict[str, tuple[float, float]] = {
    "cache_ttl": (0.0, 86_400.0),
    "negative_cache_ttl": (0.0, 86_400.0),
    "claim_interval": (0.01, 3600.0),
    "shutdown_timeout": (0.0, 3600.0),
    "trim_interval": (0.01, 86_400.0),
}
_BOOLS = {"inprocess_workers", "access_log", "access_log_probes", "tracing"}


def _cast_one(key: str, value: str) -> Any:
    name = _PREFIX + key.upper()
    if key in _INT_LIMITS:
        return _cast_int(name, value, *_INT_LIMITS[key])
    if key in _FLOAT_LIMITS:
        return _cast_float(name, value, *_FLOAT_LIMITS[key])
    if key in _BOOLS:
        return _cast_bool(name, value)
    if key in {"data_dir", "metrics_dir"}:
        return Path(value)
    if key in _FIELD_CHECKS:
        return _FIELD_CHECKS[key](name, value)
    if key == "database_url":
        return _check_url(name, value, _DATABASE_SCHEMES) if value else None
    if key in {"redis_url", "embedded_redis_url"}:
        return _check_url(name, value, _REDIS_SCHEMES) if value else None
    if key == "clickhouse_url":
        return _check_clickhouse_url(name, value) if value else None
    if key == "public_url":
        return _check_public_url(value) if value else ""
    if key == "log_level":
        return _check_choice(name, value.upper(), ("DEBUG", "INFO", "WARNING", "ERROR"))
    if key == "log_format":
        return _check_choice(name, value.lower(), ("text", "json"))
    if key == "database_schema":
        return _check_identifier(name, value)
    return value


def _check_clickhouse_url(name: str, value: str) -> Secret:
    url = _check_url(name, value, _CLICKHOUSE_SCHEMES)
    if value.lower().startswith("chdb:") and not value[5:].startswith("///"):
        raise ConfigError(
            f"{name} must name an absolute chDB folder (chdb:///abs/path), "
            f"got {value!r}"
        )
    return url


def _check_prefix(name: str, value: str) -> str:
    # Every key and channel starts with it; an empty one would mix BoltLink's
    # keys with everything else on the server.
    if not re.fullmatch(r"[A-Za-z0-9_.:{}-]{1,64}", value):
        raise ConfigError(
            f"{name} must be 1 to 64 letters, digits or _.:-{{}}, got {value!r}"
        )
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_identifier(name: str, value: str) -> str:
    if not value.isidentifier() or not value.isascii():
        raise ConfigError(f"{name} must be a plain SQL identifier, got {value!r}")
    return value.lower()


def _check_file(name: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{name} must name a readable file, got {value!r}")
    return path


def _check_cluster(name: str, value: str) -> str:
    # The name is written into DDL as ON CLUSTER and a Distributed engine
    # argument, so only a plain identifier is accepted.
    if not value.replace("-", "_").isidentifier() or not value.isascii():
        raise ConfigError(f"{name} must be a plain cluster name, got {value!r}")
    return value


_FIELD_CHECKS: dict[str, Any] = {
    "redis_prefix": _check_prefix,
    "geoip_db": lambda name, value: _check_file(name, value) if value else None,
    "ip_storage": lambda name, value: _check_choice(
        name, value.lower(), ("truncate", "drop")
    ),
    "clickhouse_cluster": lambda name, value: (
        _check_cluster(name, value) if value else ""
    ),
}


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the ``BOLTLINK_*`` variables no setting reads (misspelt ones)."""
    env = os.environ if environ is None else environ
    known = {_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    # BOLTLINK_TEST_* belong to the test suite, not to a running BoltLink.
    return sorted(
        name
        for name in env
        if name.startswith(_PREFIX)
        and name not in known
        and not name.startswith(_PREFIX + "TEST_")
    )


def export_to_environ(settings: Settings) -> None:
    """Write ``settings`` to this process's environment for its children.

    Granian starts its workers as new processes; each rebuilds the same
    settings from the variables written here.
    """
    os.environ.update(settings.to_env())
