"""The benchmark suite of issue 5 (not part of the tests): ``python -m benchmarks``."""
