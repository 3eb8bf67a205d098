"""Root conftest: loads initcore's pytest plugin for both suites.

Commands (see README):
    make test                         unit tests of the library (tests/)
    make bench                        the benchmark suite (bench/): invariants, baselines, timings
    pytest bench --benchmark-skip     invariants only, no timings
    pytest bench --benchmark-only     timings only
    pytest bench --device cpu|cuda|all --seed S
    pytest bench --update-baselines   regenerate baselines/ (review the diff)
    pytest bench -m large             the notebook's full sizes and large depths/widths
"""

pytest_plugins = ["initcore.testing.plugin", "initcore.testing.benchmarking"]
