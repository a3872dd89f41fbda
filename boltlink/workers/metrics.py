"""Declare the Prometheus metrics of the click consumers and stream retention.

Labels stay bounded: a sink (consumer group) name, an outcome from a fixed
set and a partition index, never an entry id, a code or a consumer name.
Under ``boltlink serve``'s several workers the gauges report the latest
value any of them set (one worker runs the embedded consumers).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_ENTRIES",
    "BATCH_SECONDS",
    "ENTRIES",
    "GROUP_LAG",
    "GROUP_OVERRUN",
    "GROUP_PENDING",
    "STREAM_CAP",
    "STREAM_LENGTH",
    "STREAM_TRIMMED",
]

#: Outcomes: read, written, acked, retried, reclaimed, dead_lettered,
#: trimmed (deleted from the stream while pending) and skipped (a replay
#: meant for another group).
ENTRIES = Counter(
    "boltlink_consumer_entries_total",
    "Stream entries by sink and outcome",
    ["sink", "outcome"],
)
BATCH_SECONDS = Histogram(
    "boltlink_consumer_batch_seconds",
    "Time to write and acknowledge one batch",
    ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_ENTRIES = Histogram(
    "boltlink_consumer_batch_entries",
    "Stream entries per batch handed to a sink",
    ["sink"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
GROUP_LAG = Gauge(
    "boltlink_stream_group_lag_entries",
    "Entries of a partition not yet delivered to a group (XINFO GROUPS lag)",
    ["group", "partition"],
    multiprocess_mode="mostrecent",
)
GROUP_PENDING = Gauge(
    "boltlink_stream_group_pending_entries",
    "Entries of a partition delivered to a group and not yet acknowledged",
    ["group", "partition"],
    multiprocess_mode="mostrecent",
)
STREAM_LENGTH = Gauge(
    "boltlink_stream_length_entries",
    "Entries held by a click stream partition",
    ["partition"],
    multiprocess_mode="mostrecent",
)
GROUP_OVERRUN = Gauge(
    "boltlink_stream_group_overrun",
    "1 when the stream cap (BOLTLINK_STREAM_MAXLEN) dropped entries a group "
    "had not acknowledged yet, else 0",
    ["group", "partition"],
    multiprocess_mode="mostrecent",
)
STREAM_CAP = Gauge(
    "boltlink_stream_cap_entries",
    "The hard cap on each click stream partition (BOLTLINK_STREAM_MAXLEN)",
    multiprocess_mode="mostrecent",
)
STREAM_TRIMMED = Counter(
    "boltlink_stream_trimmed_entries_total",
    "Entries trimmed from a click stream partition once every group was done",
    ["partition"],
)
