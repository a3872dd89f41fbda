"""Store clicks in ClickHouse, roll them up and answer stats queries.

``schema`` renders the DDL (one node or a cluster), ``store`` writes rows
and runs queries through one shared client per process, and ``queries``
builds the stats the API serves.
"""

from __future__ import annotations

from boltlink.analytics.schema import DIMENSIONS, RAW_COLUMNS, Schema
from boltlink.analytics.store import AnalyticsStore, acquire, dedup_token, release

__all__ = [
    "DIMENSIONS",
    "RAW_COLUMNS",
    "AnalyticsStore",
    "Schema",
    "acquire",
    "dedup_token",
    "release",
]
