"""Benchmarks for edgekit (``python -m bench.compile``)."""
