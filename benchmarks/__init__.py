"""Benchmarks for ferry, and `bench`, the tool that measures a serving endpoint the way `vllm bench serve` does."""
