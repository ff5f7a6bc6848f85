"""Benchmarks (`make bench`): figures, never CI gates."""
