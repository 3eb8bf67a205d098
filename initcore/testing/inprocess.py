"""Running pytest inside pytest (``pytester.runpytest_inprocess``) over code that uses pandas.

The ``pytester`` fixture, and each in-process run, restore ``sys.modules`` when they end, dropping every
module first imported after they began. A module that survives (torch, a plugin loaded by the root
conftest) may then hold pandas objects from a dropped copy while the next run imports a second copy,
and pandas' own ``isinstance`` checks fail. Call ``warm_up()`` when the test module is imported (at
collection, before any snapshot): it imports the library and pandas and does once what a bench run
does (measure, summarize, write, read, compare, format a mismatch, diagnose), so that pandas' lazily
imported parts are loaded too, and nothing a run needs is ever dropped.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path


@functools.cache
def warm_up() -> None:
    import pandas as pd

    from initcore import baselines, diagnose, experiments, probe, theory  # noqa: F401
    from initcore.experiments import MLPRun
    from initcore.models import MLPConfig
    from initcore.testing import measure

    run = MLPRun(MLPConfig(4, 4, 2, "tanh"), "xavier_uniform", batch=4)
    frame = measure.measure(run, 0)
    long = measure.tidy(frame, measure.statistics_for(run))
    rows = baselines.summarize([long, long.assign(value=long["value"] * 1.01)], run.key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm.csv"
        baselines.update(path, rows)
        rows = baselines.load_config(path, run.key)
    try:
        baselines.assert_matches(long.assign(config=run.key, value=long["value"] * 3), rows)
    except baselines.BaselineMismatch as exc:
        str(exc)
    diagnose.diagnose(frame[frame["kind"] != "param"])
    measure.disagreements(frame, frame, measure.statistics_for(run)).to_string()
    pd.DataFrame({"a": ["x"], "b": [1.0]}).melt(id_vars=["a"]).to_string()
