"""Run the click stream consumers: ``aggregate`` and ``ingest``."""
