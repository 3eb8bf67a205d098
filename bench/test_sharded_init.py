"""Sharded init (issue 12): FSDP2 and tensor parallel give the model that one process gives.

The model of ``experiments.VARIANT_RUNS["prenorm"]`` (4 pre-norm blocks, d_model 128, the "standard"
strategy) is built on the meta device on 1, 2 and 4 ranks, sharded (FSDP2 ``fully_shard``; tensor
parallel with q, k, v and mlp_in column-wise, attn_out and mlp_out row-wise, the embedding's rows
sharded, norms replicated), materialized with ``to_empty``, poisoned with NaN and initialized with
``init.apply`` (``initcore.distributed.TransformerRecipe``). What holds, for each sharding:
- the gathered model is bit-identical to the one-process model of the same seed, at every world size;
- every drawn parameter follows the strategy's distribution (two-sample KS against the one-process
  model at another seed), its shards are independent (none equal, correlations within what
  independent draws give, full-rank matrices) and nothing is left NaN;
- the traced statistics of the gathered model match the one-process baseline rows of
  ``baselines/transformer_variants.csv``: the bench's baselines apply unchanged.
The naive recipe (``nn.init`` on the shards after seeding every rank alike) failing the independence
check is shown in tests/distributed/test_checks.py, beside the other checks' failures.

Ranks are processes started once per world size and reused by every test (``initcore.distributed.group``);
CPU ranks use gloo. CUDA ranks use nccl, one device each: the cuda cases need at least two GPUs.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
import torch

from initcore import experiments, probe
from initcore.distributed import ShardReport, TransformerRecipe, check, gathered_model, group, run_recipe
from initcore.testing import measure

EXPERIMENT = "transformer_variants"
RUN = experiments.VARIANT_RUNS["prenorm"]
PARALLELS = ("fsdp", "tp")
WORLD_SIZES = (1, 2, 4)


def _backend(device: str) -> tuple[str, tuple[int, ...]]:
    """The backend and world sizes for ``device``: gloo on the CPU, nccl with one GPU per rank."""
    if device == "cpu":
        return "gloo", WORLD_SIZES
    count = torch.cuda.device_count()
    if count < 2:
        pytest.skip(f"sharding over nccl needs at least 2 CUDA devices; {count} available here")
    return "nccl", tuple(w for w in WORLD_SIZES if w <= count)


_CACHE: dict[tuple, tuple[ShardReport, dict]] = {}


def sharded(parallel: str, device: str, seed: int) -> tuple[ShardReport, dict]:
    """The report of initcore's recipe under ``parallel`` and the gathered runs, once per session."""
    key = (parallel, device, seed)
    if key not in _CACHE:
        backend, sizes = _backend(device)
        recipe = TransformerRecipe(RUN.model, RUN.init, parallel)
        runs = {w: group(w, backend).run(run_recipe, recipe, seed) for w in sizes}
        _CACHE[key] = check(recipe, sizes, seed=seed, backend=backend, runs=runs), runs
    return _CACHE[key]


def _assert_holds(report: ShardReport, column: str, what: str) -> None:
    tested = report.table[column].notna()
    assert tested.any(), f"{report.recipe}: no parameter was tested for {column}"
    failed = report.failed(column)
    assert failed.empty, (f"{report.recipe}: {what} fails for {len(failed)} of {int(tested.sum())} parameters:\n"
                          + "\n".join(f for f in report.failures if any(n in f for n in failed["name"]))[:4000])


@pytest.mark.parametrize("parallel", PARALLELS)
def test_gathered_model_is_the_one_process_model_at_every_world_size(parallel, device, seed):
    report, _ = sharded(parallel, device, seed)
    _assert_holds(report, "identical", "bit-identity with the one-process init of the same seed")
    _assert_holds(report, "invariant", "bit-identity across world sizes")
    assert set(report.table["world_size"]) == set(_backend(device)[1])


@pytest.mark.parametrize("parallel", PARALLELS)
def test_shards_are_independent_draws_from_the_strategy(parallel, device, seed):
    report, _ = sharded(parallel, device, seed)
    _assert_holds(report, "distribution", "the strategy's distribution (KS)")
    _assert_holds(report, "independent", "independence of shards")
    sharded_rows = report.table[report.table["world_size"] > 1]
    assert sharded_rows["independent"].eq(True).sum() >= 7 * RUN.model.n_layers  # every block matrix compared


@pytest.mark.parametrize("parallel", PARALLELS)
def test_nothing_is_left_uninitialized(parallel, device, seed):
    report, _ = sharded(parallel, device, seed)
    assert not report.notes, report.notes  # to_empty was called, so every piece was NaN before init
    _assert_holds(report, "initialized", "no NaN after init")
    _assert_holds(report, "replicas", "agreement of replicated pieces")


_FRAMES: dict[tuple, pd.DataFrame] = {}


def _gathered_frame(parallel: str, device: str, seed: int) -> pd.DataFrame:
    """``measure.measure``'s frame, on the gathered model of the largest world size and the inputs drawn
    on from rank 0's generator, where ``RUN.build`` draws them after init. Traced once per distinct
    content: gathered models that are the same bytes (FSDP's and TP's, when both are right) share a trace."""
    _, runs = sharded(parallel, device, seed)
    rank0 = runs[max(runs)][0]
    key = (device, bytes(rank0.generator_state.numpy()),
           *(hashlib.sha1(t.contiguous().reshape(-1).view(torch.uint8).numpy()).digest() for t in rank0.full.values()))
    if key not in _FRAMES:
        model = gathered_model(RUN.build(torch.Generator().manual_seed(seed + 12345))[0], rank0.full)
        generator = torch.Generator()
        generator.set_state(rank0.generator_state)
        idx = torch.randint(0, RUN.model.vocab_size, (RUN.batch, RUN.seq_len), generator=generator)
        model, idx = model.to(device), idx.to(device)
        frame = pd.concat([probe.trace(model, idx, RUN.loss), measure.parameter_stats(model)], ignore_index=True)
        _FRAMES[key] = frame
    return _FRAMES[key].copy()


@pytest.mark.parametrize("parallel", PARALLELS)
def test_traced_statistics_match_the_one_process_baseline(parallel, device, seed, baseline, pytestconfig):
    if pytestconfig.getoption("--update-baselines"):
        pytest.skip(f"compares against {EXPERIMENT}'s rows, which bench/test_transformer_variants.py regenerates")
    baseline.check(EXPERIMENT, RUN, _gathered_frame(parallel, device, seed))
