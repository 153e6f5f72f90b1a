"""Benchmarks: `python -m magihuman.bench` (modes and flags: `cli`)."""
