"""Benchmarks of hubscout (ranking quality, shortlist, speed). Run as ``python -m benchmarks.<name>``."""
