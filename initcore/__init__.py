"""initcore: does your network still propagate signal and gradients at initialization?

Models (`initcore.models`), role-targeted init strategies (`initcore.init`), a probe that records
per-layer statistics (`initcore.probe`), theory that predicts them (`initcore.theory`), and a pytest
suite (`bench/`) that asserts the invariants against stored baselines (`baselines/`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazily: `import initcore` stays free of torch
    if name == "audit":
        from initcore.auditing.core import audit

        return audit
    raise AttributeError(f"module 'initcore' has no attribute {name!r}")
