"""initcore's pytest plugin and the helpers shared by bench/ and tests/ (the only home of pytest imports).

In a suite of your own (see the README, "Check your own model"): ``pytest_plugins =
["initcore.testing.plugin"]`` in the root conftest.py gives the fixtures ``trace_run`` and ``baseline`` and
the options ``--device``, ``--seed``, ``--update-baselines``, ``--baselines-dir``; ``Case`` names your model
and its factory, ``assert_healthy`` fails a test on any symptom of ``initcore.diagnose``, ``assert_init`` on any
parameter whose init is not the intended one (``initcore.audit``), ``assert_representable`` on any tensor
that a cast to fp16, bf16 or fp8 would flush or overflow (``initcore.probe.precision``).
"""

from __future__ import annotations

__all__ = ["Case", "assert_healthy", "assert_init", "assert_representable"]


def __getattr__(name: str):  # lazily: loading the plugin must not import torch models, pandas or the probe
    if name == "Case":
        from initcore.experiments import Case

        return Case
    if name in ("assert_healthy", "assert_init", "assert_representable"):
        from initcore.testing import asserts

        return getattr(asserts, name)
    raise AttributeError(f"module 'initcore.testing' has no attribute {name!r}")
