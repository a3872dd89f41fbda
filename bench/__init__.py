"""Benchmark harness of BoltLink: baselines, redirects, API and pipeline."""
