"""Benchmarks (GPU): runnable scripts and pytest-benchmark suites sharing one case registry per op."""
