"""Benchmarks and tools: rdsx-stress and the baselines it is compared against."""
