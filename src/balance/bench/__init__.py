"""Benchmarks: the naive locking baseline, the raw journal-insert ceiling, and their runner."""
