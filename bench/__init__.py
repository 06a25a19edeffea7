"""Benchmark suite: symgrad against hand-written and autodiff peers (see bench/README.md)."""
