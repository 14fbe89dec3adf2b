"""Benchmarks that print tables; `make bench` runs them all (see BENCHMARKS.md)."""
