"""Benchmarks and the fault drill: ``python -m train.bench.NAME``; results in ``results/``."""
