"""The report built once for tests/report: the experiments shrunk (``dataclasses.replace``; no configuration
of its own) so that it takes seconds, with baselines of its depth runs made here from other seeds, and a
corrupt baseline file beside them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from initcore import baselines, experiments, probe
from initcore.testing.measure import one_thread

pytest.importorskip("matplotlib")

SEED = 3
BASELINE_SEEDS = range(10, 14)  # the bands' own seeds: SEED is a new draw against them
SMALL_MLP = replace(experiments.DEPTH_MLP, in_features=32, width=32, depth=4)


def _tiny_transformer(run, **changes):
    return replace(run, model=replace(run.model, **changes), batch=2, seq_len=8)


def small_runs():
    from initcore import report

    return report.ReportRuns(
        depth={name: experiments.MLPRun(SMALL_MLP, strategy, batch=16)
               for name, strategy in experiments.DEPTH_INITS.items()},
        xavier={name: replace(run, batch=200) for name, run in experiments.XAVIER_RUNS.items()},
        activation={key: replace(run, model=replace(run.model, in_features=32, width=32, depth=4), batch=64)
                    for key, run in experiments.ACTIVATION_RUNS.items()},
        transformer={name: _tiny_transformer(run, vocab_size=100, d_model=32, n_heads=2, d_ff=64, n_layers=3)
                     for name, run in experiments.TRANSFORMER_RUNS.items()},
        depth_scaling={(s, n): _tiny_transformer(experiments.depth_run(s, n), d_model=32, n_heads=2, d_ff=64)
                       for s in experiments.DEPTH_STRATEGIES for n in (2, 4)},
        attention={(s, t): replace(experiments.ATTENTION_RUNS[(s, t)], batch=2)
                   for s in ("xavier_uniform", "gpt2", "deepnorm") for t in experiments.SEQ_LENS[:2]},
        mha_trap={name: _tiny_transformer(run, d_model=32, n_heads=2, d_ff=64, vocab_size=64)
                  for name, run in experiments.MHA_TRAP_RUNS.items()},
        width={(s, w): replace(experiments.width_run(s, w), batch=4) for s in experiments.WIDTH_STRATEGIES
               for w in (32, 64, 128)},
        failure={mode: replace(run, model=replace(run.model, in_features=64, width=64))
                 for mode, run in experiments.FAILURE_RUNS.items()},
    )


def write_depth_baselines(directory: Path, runs) -> None:
    """baselines/depth_init.csv for the small depth runs, as the bench writes one: its statistics over seeds."""
    rows = []
    for run in runs.depth.values():
        frames = []
        for seed in BASELINE_SEEDS:
            model, inputs = run.build(torch.Generator().manual_seed(seed))
            frame = probe.trace(model, inputs, loss=run.loss)
            frame = frame[frame["kind"] == "linear"]
            frames.append(pd.concat([pd.DataFrame({"layer": frame["module"], "statistic": s, "value": frame[s]})
                                     for s in ("act_std", "grad_norm", "dead_frac")], ignore_index=True))
        rows.append(baselines.summarize(frames, run.key))
    baselines.update(directory / "depth_init.csv", pd.concat(rows, ignore_index=True))


@dataclass(frozen=True)
class Built:
    out: Path  # the report's folder
    baselines: Path  # the baselines it read
    runs: object


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    from initcore import report

    runs = small_runs()
    directory = tmp_path_factory.mktemp("baselines")
    with one_thread():
        write_depth_baselines(directory, runs)
    (directory / "activations.csv").write_bytes(b"\x00\xffnot a baseline")
    out = tmp_path_factory.mktemp("report") / "nested" / "out"  # created by the report
    with one_thread():  # as `initcore report` runs (small tensors: faster on one thread)
        index = report.write_report(out, seed=SEED, runs=runs, dpi=30, bands=report.SeedBands(directory))
    assert index == out / "index.html"
    return Built(out, directory, runs)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test here on one thread, as the report was built: fresh traces then match it to the last bit."""
    with one_thread():
        yield
