"""The smallest systematic variance shift each bench experiment detects, with and without the pooled tests.

For each experiment, a shift of size delta multiplies the output variance of every hidden layer (an MLP's
Linear layers, a transformer's feed-forward branches) by 1 + delta, through forward hooks that no weight
row sees. Each configuration is measured as its bench test measures it (the bench file's own measure
function and statistics) and compared with the committed baselines: ``baselines.compare`` (the per-row
bands: "before") and ``baselines.assert_matches`` (the bands and the pooled tests: "after"); an experiment
detects the shift at a seed when one of its configurations fails. Printed: the smallest delta of GRID that
fails at every seed (a monotone search per seed; no shift must pass at every seed, or the line says so).

    python scripts/detect_shifts.py [--seeds 0 1 2] [--experiments NAME ...] [--one-block]

--one-block instead changes one branch (the feed-forward) of one block of the mid-size transformers by 10% in
variance, in its forward pass or in its output weights, and counts the seeds that fail.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
from pathlib import Path

from initcore import baselines
from initcore.init import strategies
from initcore.models import MLP, TransformerBlock
from initcore.testing import measure

GRID = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
BENCH = Path(__file__).resolve().parents[1] / "bench"
# experiment -> (bench file, its runs, its measure function, its statistics(run)) as its test_matches_baseline
EXPERIMENTS = {
    "depth_init": ("test_depth_init.py", "RUNS", None, None),
    "xavier_shapes": ("test_xavier_shapes.py", "RUNS", "measure_layer", "STATISTICS"),
    "activations": ("test_activations.py", "RUNS", "measure_pooled", "statistics"),
    "failure_modes": ("test_failure_modes.py", "RUNS", None, None),
    "transformer_strategies": ("test_transformer_strategies.py", "RUNS", "measure_strategy", "statistics"),
    "transformer_variants": ("test_transformer_variants.py", "RUNS", None, None),
    "train_mode": ("test_train_mode.py", "RUNS", "measure_train", "statistics"),
}

# the injected change: the output variance of the hidden layers times FACTOR (a forward hook, so no weight row
# sees it), or with WEIGHTS the variance of the feed-forward output weights (role mlp_out) of BLOCKS (None: all)
SHIFT = {"factor": 1.0, "blocks": None, "weights": False}
_mlp_init, _block_init = MLP.__init__, TransformerBlock.__init__


def _scale(module, inputs, output):
    return output * math.sqrt(SHIFT["factor"])


def _mlp(self, *args, **kwargs):
    _mlp_init(self, *args, **kwargs)
    for layer in self.layers:
        layer.register_forward_hook(_scale)


def _block(self, cfg, index=0):
    _block_init(self, cfg, index)
    if (SHIFT["blocks"] is None or index in SHIFT["blocks"]) and not SHIFT["weights"]:
        self.ffn.register_forward_hook(_scale)


def _init_param(strategy, p, ctx):
    """The registry's own, then, with SHIFT["weights"], the marked blocks' feed-forward output weights scaled."""
    _registry_init_param(strategy, p, ctx)
    if SHIFT["weights"] and p.role == "mlp_out" and (SHIFT["blocks"] is None or p.block in SHIFT["blocks"]):
        p.param.mul_(math.sqrt(SHIFT["factor"]))


_registry_init_param = strategies.init_param
MLP.__init__, TransformerBlock.__init__, strategies.init_param = _mlp, _block, _init_param


@functools.cache
def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verdict(experiment: str, run, seed: int) -> tuple[bool, bool]:
    """(fails the per-row bands, fails the bands or the pooled tests) at ``seed``, as the bench measures."""
    file, _, fn, stats = EXPERIMENTS[experiment]
    bench = _load(file)
    fn = getattr(bench, fn) if fn else measure.measure
    stats = (getattr(bench, stats) if isinstance(getattr(bench, stats), dict) else getattr(bench, stats)(run)) \
        if stats else measure.statistics_for(run)
    frame = fn(run, seed, "cpu")
    rows = measure.tidy(frame, stats).assign(config=run.key)
    base = baselines.load_config(f"baselines/{experiment}.csv", run.key)
    before = not baselines.compare(rows, base)["ok"].all()
    try:
        baselines.assert_matches(rows, base)
        after = False
    except baselines.BaselineMismatch:
        after = True
    return before, after


def fails(experiment: str, delta: float, seed: int) -> tuple[bool, bool]:
    SHIFT.update(factor=1 + delta, blocks=None, weights=False)
    before = after = False
    for run in getattr(_load(EXPERIMENTS[experiment][0]), EXPERIMENTS[experiment][1]).values():
        b, a = verdict(experiment, run, seed)
        before, after = before or b, after or a
        if before and after:
            break
    return before, after


def smallest(experiment: str, seeds: list[int]) -> tuple[float, float]:
    """The smallest delta of GRID failing at every seed, before and after (a monotone search per seed)."""
    found = []
    for which in (0, 1):
        worst = 0.0
        for seed in seeds:
            lo, hi = -1, len(GRID) - 1  # GRID[hi] fails (checked), GRID[lo] passes
            if not fails(experiment, GRID[hi], seed)[which]:
                worst = math.inf
                break
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fails(experiment, GRID[mid], seed)[which]:
                    hi = mid
                else:
                    lo = mid
            worst = max(worst, GRID[hi])
        found.append(worst)
    return found[0], found[1]


def one_block(seeds: list[int]) -> None:
    runs = {"transformer_strategies": "standard", "transformer_variants": "prenorm"}
    for experiment, name in runs.items():
        run = _load(EXPERIMENTS[experiment][0]).RUNS[name]
        for weights in (False, True):
            for block in (0, run.model.n_layers // 2):
                SHIFT.update(factor=1.1, blocks=(block,), weights=weights)
                got = [verdict(experiment, run, s) for s in seeds]
                what = "weights" if weights else "forward"
                print(f"{experiment:24s} block {block:2d} {what:8s} before {sum(b for b, _ in got)}/{len(seeds)}"
                      f"  after {sum(a for _, a in got)}/{len(seeds)} seeds fail", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--one-block", action="store_true")
    args = parser.parse_args()
    with measure.one_thread():
        if args.one_block:
            one_block(args.seeds)
            return
        for experiment in args.experiments:
            control = [fails(experiment, 0.0, seed) for seed in args.seeds]
            if any(b or a for b, a in control):
                print(f"{experiment:24s} fails without a shift at some seed: {control}", flush=True)
                continue
            before, after = smallest(experiment, args.seeds)
            print(f"{experiment:24s} before {before:7.2%}  after {after:7.2%}", flush=True)


if __name__ == "__main__":
    main()
