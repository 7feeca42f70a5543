"""Benchmarks (`make bench`): each figure is a ratio against a baseline run side by side."""
