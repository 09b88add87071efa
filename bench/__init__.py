"""Benchmarks for edgekit, one command each (``python -m bench.compile|fleet|edge``). See docs/benchmarks.md."""
