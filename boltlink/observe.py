"""Make a consumer process observable: its metrics endpoint and its tracing.

``boltlink serve`` answers ``/metrics`` itself; ``boltlink aggregate`` and
``boltlink ingest`` have no HTTP server of their own, so with
``BOLTLINK_METRICS_PORT`` set they expose the same registry on that port
(a small thread of prometheus_client's), on ``BOLTLINK_HOST``.
"""

from __future__ import annotations

import logging

from boltlink import tracing
from boltlink.errors import ConfigError
from boltlink.settings import Settings

__all__ = ["observe_consumers"]

logger = logging.getLogger("boltlink.metrics")


def observe_consumers(role: str, settings: Settings) -> None:
    """Start the metrics endpoint and tracing of a consumer process, if set."""
    if settings.tracing:
        tracing.configure(role)
    if not settings.metrics_port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.metrics_port, addr=settings.host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.host}:{settings.metrics_port}: "
            f"{(exc.strerror or str(exc)).lower()}"
        ) from None
    logger.info(
        "%s metrics at http://%s:%d/metrics", role, settings.host, settings.metrics_port
    )
