"""BoltLink: a self-hosted URL shortener backend with exact click analytics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from boltlink.errors import ApiError, BoltLinkError, ConfigError
from boltlink.settings import Settings

__all__ = ["ApiError", "BoltLinkError", "ConfigError", "Settings", "__version__"]

try:
    __version__ = version("boltlink")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0"
