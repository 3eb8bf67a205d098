"""The bench sees what issue 14 found it missing: a changed dropout default (train-mode runs), small
systematic variance shifts (the pooled tests beside the per-row bands). Each test runs one bench test
against the committed baselines/ with the change injected by a tiny plugin (``-p``), in process, as
tests/testing/test_bench_catches_regressions.py does, and expects it to fail with the row that moved;
a control run without a change passes, so the failure is the change's doing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from initcore.testing import inprocess, measure

pytest_plugins = ["pytester"]

inprocess.warm_up()  # at collection: see initcore.testing.inprocess

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

HEADER = '''
import math
import pytest
import torch
from torch import nn
from initcore.models import transformer

_mp = pytest.MonkeyPatch()


def pytest_unconfigure(config):
    _mp.undo()


def pytest_configure(config):
'''

# TransformerConfig's dropout default 0 -> 0.1: every config built without a rate gets 0.1
DROPOUT_DEFAULT = '''
    build = transformer.Transformer.from_config.__func__

    def from_config(cls, cfg):
        return build(cls, cfg if cfg.dropout else transformer.TransformerConfig(**{**vars(cfg), "dropout": 0.1}))

    _mp.setattr(transformer.Transformer, "from_config", classmethod(from_config))
'''
# the block's residual dropout built without the config's rate: nn.Dropout()'s own default, 0.5
DROPOUT_IGNORED = '''
    init = transformer.TransformerBlock.__init__

    def patched(self, cfg, index=0):
        init(self, cfg, index)
        if cfg.dropout:
            self.drop = nn.Dropout()

    _mp.setattr(transformer.TransformerBlock, "__init__", patched)
'''

# every feed-forward branch's output variance x 1.2: each block's ffn act_std moves ~2.6 spreads, inside its band
# (10 spreads + 2%: the bands alone need ~30% at seeds 0-2), 12 times the same way: the pooled mean test's
# mean_z is ~9 (scripts/detect_shifts.py: ~12% is the smallest such shift it sees at seeds 0-2)
FFN_VARIANCE = '''
    init = transformer.TransformerBlock.__init__

    def patched(self, cfg, index=0):
        init(self, cfg, index)
        self.ffn.register_forward_hook(lambda module, inputs, y: y * math.sqrt(1.2))

    _mp.setattr(transformer.TransformerBlock, "__init__", patched)
'''

# change -> (plugin body, the bench test that must fail, a line of its table)
CHANGES = {
    "dropout-default": (DROPOUT_DEFAULT, "test_train_mode.py::test_matches_baseline[default_dropout-cpu]",
                        "*dropout_effect*"),
    "dropout-ignored": (DROPOUT_IGNORED, "test_train_mode.py::test_matches_baseline[dropout-cpu]",
                        "*dropout_effect*"),
    "ffn-variance-every-block": (FFN_VARIANCE, "test_transformer_strategies.py::test_matches_baseline[standard-cpu]",
                                 "*blocks.*.ffn*act_std*12*mean shifted*"),
}


def run_bench(pytester: pytest.Pytester, seed: int, targets: list[str], *args: str) -> pytest.RunResult:
    with measure.one_thread():
        return pytester.runpytest_inprocess(
            f"--rootdir={REPO}", "-c", str(REPO / "pyproject.toml"), "-p", "no:cacheprovider", "--benchmark-skip",
            "--device=cpu", f"--seed={seed}", *args, *(str(BENCH / t) for t in targets))


def test_targets_pass_without_a_change(pytester, seed):
    targets = sorted({target for _, target, _ in CHANGES.values()})
    run_bench(pytester, seed, targets).assert_outcomes(passed=len(targets))


@pytest.mark.parametrize("name", list(CHANGES))
def test_change_fails_the_bench(name, pytester, seed):
    body, target, row = CHANGES[name]
    plugin = f"change_{name.replace('-', '_')}"
    pytester.makepyfile(**{plugin: HEADER + body})
    pytester.syspathinsert()
    # What is shown here is what the bands see. At the baselines' own seed (0) the exact check (the same seed's
    # stored values, tests/testing/test_same_seed.py) fails first with another table; one seed on, the bands decide.
    result = run_bench(pytester, seed if seed != 0 else 1, [target], "-p", plugin)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*statistics moved from their baseline:*", row,
                                 "If it is not, read the rows from the top: they moved furthest*"])
