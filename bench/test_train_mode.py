"""8. Training mode: the small pre-norm transformer traced with dropout active, against its baseline.

Every other bench run traces in eval mode, where no dropout applies, so nothing there sees a dropout rate.
``experiments.TRAIN_RUNS`` trace the transformer_variants reference (4 blocks, d_model 128, batch 4 x seq 32,
"standard") in train mode: with the config's own dropout (0: a changed default moves this run's
statistics) and with dropout 0.1 (``TransformerRun(dropout=0.1)``: on the attention probabilities and on
both residual branches). The masks come from torch's global generator, seeded here with the run's seed,
so a seed gives the same trace every time; a CUDA device draws other masks than the CPU (Philox, not the
Mersenne twister), so these runs have no CPU twin to agree with and run on the CPU only.

Dropout at init hardly moves the traced statistics: at p = 0.1 no row moves by more than 5 seed spreads
(the attention entropies most), inside every band. What it does move is the output itself, so each trace
adds a paired row: ``dropout_effect`` = std(y_train - y_eval) / std(y_eval) of the model's output for the
same weights, tokens and masks' seed: 0 exactly at p = 0 (a band of ``baselines.ABS_FLOOR``), 0.45 at p = 0.1
(seed spread 0.02). A changed default dropout fails the "default_dropout" run there, at every seed.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from initcore import experiments, probe
from initcore.testing import measure

EXPERIMENT = "train_mode"
RUNS = experiments.TRAIN_RUNS
EXTRA = {"pooled": ("dropout_effect",)}


def statistics(run):
    return {**measure.statistics_for(run), **EXTRA}


def dropout_effect(model: torch.nn.Module, inputs, seed: int) -> float:
    """std(y_train - y_eval) / std(y_eval) of the model's output: what dropout changes, for these weights."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        y_eval = model.eval()(inputs)
        torch.manual_seed(seed)
        y_train = model.train()(inputs)
    return float((y_train - y_eval).double().std() / y_eval.double().std())


def measure_train(run, seed: int, device: str) -> pd.DataFrame:
    """``measure.measure``'s rows with torch's CPU generator seeded by ``seed`` for the dropout masks (and
    restored after), plus the pooled row "blocks.*" with ``dropout_effect``."""
    model, inputs, _ = measure.build(run, seed, device)
    params = measure.parameter_stats(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        frame = probe.trace(model, inputs, run.loss, select=run.select, train=run.train)
    row = {"module": "blocks.*", "kind": "pooled", "layer": -1, "dropout_effect": dropout_effect(model, inputs, seed)}
    return pd.concat([frame, params, pd.DataFrame([row])], ignore_index=True)


@pytest.fixture
def cpu_only(device):
    if device != "cpu":
        pytest.skip("dropout masks come from the device's own generator: no CPU twin to agree with")


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_baseline(name, cpu_only, trace_run, baseline):
    run = RUNS[name]
    frame = trace_run(run, measure=measure_train, statistics=statistics(run))
    baseline.check(EXPERIMENT, run, frame, measure=measure_train, statistics=statistics(run))


@pytest.mark.parametrize("name", list(RUNS))
def test_dropout_changes_the_output_only_when_configured(name, cpu_only, trace_run):
    """At the run's rate p (the config's own where the run gives none): train and eval mode give the same
    output bit for bit at p = 0, and a different one at p > 0."""
    run = RUNS[name]
    p = run.model.dropout if run.dropout is None else run.dropout
    effect = trace_run(run, measure=measure_train, statistics=statistics(run)).loc[
        lambda f: f["module"] == "blocks.*", "dropout_effect"].item()
    assert (effect == 0) == (p == 0), f"dropout {p:g}: train and eval outputs differ by {effect:.3g} of their std"
