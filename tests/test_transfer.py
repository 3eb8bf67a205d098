"""initcore.transfer: the sweep as data, the argmin per width and its shift in grid steps, divergence, bad input."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from initcore import transfer
from initcore.transfer import TeacherTask, TransferRun

TINY = TransferRun(widths=(8, 16), lrs=(1e-3, 1e-2), steps=3, tail=2, seeds=(0,))
GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def _frame(curves: dict[tuple[str, int, int], list[float]], lrs=GRID) -> pd.DataFrame:
    """A ``sweep``-shaped frame: curves[(parametrization, width, seed)] is the loss at each lr of ``lrs``."""
    rows = [("mlp", p, w, lr, s, loss, not math.isfinite(loss))
            for (p, w, s), losses in curves.items() for lr, loss in zip(lrs, losses, strict=True)]
    return pd.DataFrame(rows, columns=transfer.COLUMNS)


def test_best_lr_is_the_argmin_of_the_seed_mean_with_its_grid_index():
    frame = _frame({("sp", 64, 0): [3.0, 1.0, 2.0, 4.0], ("sp", 64, 1): [3.0, 2.0, 1.5, 4.0],  # means 1.5, 1.75
                    ("sp", 512, 0): [1.0, 2.0, 3.0, 4.0], ("sp", 512, 1): [1.0, 2.0, 3.0, 4.0]})
    best = transfer.best_lr(frame).set_index("width")
    assert best.loc[64, "lr"] == 1e-3 and best.loc[64, "index"] == 1 and best.loc[64, "loss"] == 1.5
    assert best.loc[512, "lr"] == 1e-4 and best.loc[512, "index"] == 0


def test_best_lr_per_seed():
    frame = _frame({("mup", 64, 0): [3.0, 1.0, 2.0, 4.0], ("mup", 64, 1): [3.0, 2.0, 1.5, 4.0]})
    best = transfer.best_lr(frame, per_seed=True).set_index("seed")
    assert best.loc[0, "index"] == 1 and best.loc[1, "index"] == 2


def test_the_index_counts_in_the_whole_grid_even_where_a_width_lacks_a_rate():
    frame = pd.concat([_frame({("sp", 64, 0): [3.0, 2.0, 1.0, 4.0]}),
                       _frame({("sp", 128, 0): [2.0, 1.0]}, lrs=(1e-2, 1e-1))])
    assert transfer.best_lr(frame).set_index("width").loc[128, "index"] == 3


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_diverged_rate_is_never_the_argmin(bad):
    # lr 1e-1 diverged in seed 1: its seed mean is inf, though seed 0 found the lowest loss of all there
    frame = _frame({("sp", 64, 0): [3.0, 2.0, 1.0, 0.1], ("sp", 64, 1): [3.0, 2.0, 1.0, bad]})
    assert transfer.best_lr(frame)["index"].item() == 2
    per_seed = transfer.best_lr(frame, per_seed=True).set_index("seed")["index"]
    assert per_seed[0] == 3 and per_seed[1] == 2


def test_a_width_whose_every_rate_diverged_has_no_argmin():
    frame = _frame({("sp", 64, 0): [math.nan, math.inf, math.nan, math.inf], ("sp", 128, 0): [2.0, 1.0, 3.0, 4.0]})
    best = transfer.best_lr(frame).set_index("width")
    assert math.isnan(best.loc[64, "lr"]) and best.loc[64, "index"] == -1
    assert best.loc[128, "index"] == 1


def test_shift_counts_grid_steps_from_the_smallest_width_to_the_largest():
    frame = _frame({("sp", 64, 0): [4.0, 3.0, 1.0, 2.0], ("sp", 128, 0): [1.0, 3.0, 4.0, 5.0],
                    ("sp", 512, 0): [2.0, 1.0, 3.0, 4.0],
                    ("mup", 64, 0): [4.0, 3.0, 1.0, 2.0], ("mup", 512, 0): [4.0, 3.0, 1.0, 2.0]})
    shifts = transfer.shift(transfer.best_lr(frame)).set_index("parametrization")
    assert shifts.loc["sp", "shift"] == -1 and shifts.loc["sp", "range"] == 2  # 2 -> 0 -> 1
    assert shifts.loc["mup", "shift"] == 0 and shifts.loc["mup", "range"] == 0
    per_seed = transfer.shift(transfer.best_lr(frame, per_seed=True))
    assert list(per_seed.columns) == ["parametrization", "seed", "shift", "range"]


def test_best_lr_names_the_columns_it_needs():
    with pytest.raises(ValueError, match="missing columns: loss.*a sweep frame has model, parametrization"):
        transfer.best_lr(pd.DataFrame({"parametrization": ["sp"], "width": [64], "lr": [1e-3], "seed": [0]}))


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": "cnn"}, "unknown model 'cnn'; the transfer sweep knows: mlp"),
    ({"parametrization": "ntk"}, "unknown parametrization 'ntk'; valid: sp, mup"),
    ({"widths": (64,)}, "widths must be 2 or more distinct integers"),
    ({"widths": (128, 64)}, "increasing; got \\(128, 64\\)"),
    ({"widths": (64, 64.5)}, "widths must be"),
    ({"seeds": ()}, "seeds must be 1 or more"),
    ({"seeds": (-1,)}, "seeds must be"),
    ({"lrs": (1e-3,)}, "lrs must be two or more"),
    ({"lrs": (1e-3, -1e-2)}, "positive finite numbers"),
    ({"lrs": (1e-3, math.nan)}, "positive finite numbers"),
    ({"lrs": (1e-2, 1e-3)}, "increasing"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"tail": True}, "tail must be a positive integer"),
    ({"tail": 60}, "tail \\(60\\) must be at most steps \\(50\\)"),
    ({"base_width": 0}, "base_width must be a positive integer"),
])
def test_bad_runs_say_what_is_valid(changes, message):
    with pytest.raises(ValueError, match=message):
        TransferRun(**changes)


def test_the_default_grid_is_fine_and_wide_enough():
    # SP's best lr under Adam falls as 1/width: a factor 8 from 64 to 512, at least 2 grid steps (the issue)
    run = TransferRun()
    lrs = torch.tensor(run.lrs, dtype=torch.float64)
    assert len(lrs) >= 6 and math.log10(lrs[-1] / lrs[0]) >= 3
    assert math.log(8) / math.log((lrs[1:] / lrs[:-1]).max()) >= 2
    assert run.widths == (64, 128, 256, 512) and len(run.seeds) == 3


def test_the_teacher_is_fixed_and_its_targets_have_unit_variance():
    task = TeacherTask()
    a, b = task.teacher(), task.teacher()
    x = torch.randn(5, task.in_features)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    y = torch.cat([y for _, y in task.batches(a, 0, 40)])  # 2560 draws
    # normalized on 4096 other draws: each output's std is 1 up to sampling error, ~1/sqrt(2 n) = 0.014 per
    # estimate for a Gaussian (more for a ReLU net's heavier tails); 0.1 is 5 of those with room for the tails
    torch.testing.assert_close(y.std(0), torch.ones(task.n_out), rtol=0, atol=0.1)


def test_batches_are_a_seeds_own_and_the_same_every_time():
    task = TeacherTask()
    teacher = task.teacher()
    first, again, other = (task.batches(teacher, s, 2) for s in (0, 0, 1))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first[0][0], other[0][0])


def test_every_lr_starts_from_the_same_weights_and_mup_scales_the_hidden_rates():
    run = TransferRun(parametrization="mup", widths=(16, 32))
    (m1, opt1), (m2, _) = transfer.build(run, 32, 1e-3, 0), transfer.build(run, 32, 1e-2, 0)
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0, msg=name)
    assert sorted({g["lr"] for g in opt1.param_groups}) == pytest.approx([1e-3 / 2, 1e-3])  # m_in = 32/16
    _, sp = transfer.build(TransferRun(widths=(16, 32)), 32, 1e-3, 0)
    assert [g["lr"] for g in sp.param_groups] == [1e-3]


def test_train_stops_at_a_non_finite_loss():
    task = TeacherTask()
    model, optimizer = transfer.build(TINY, 8, 1e-3, 0)
    x, y = task.batches(task.teacher(), 0, 1)[0]
    seen = []
    model.register_forward_hook(lambda *_: seen.append(1))
    batches = [(x, y), (x, y * math.nan), (x, y), (x, y)]
    assert transfer.train(model, optimizer, task, batches, tail=2) == (math.inf, True)
    assert len(seen) == 2  # the nan step, and nothing after it


def test_train_averages_the_last_tail_losses():
    task = TeacherTask()
    model, optimizer = transfer.build(TINY, 8, 0.0 + 1e-12, 0)  # a step this small leaves the losses as they are
    batches = task.batches(task.teacher(), 0, 4)
    with torch.no_grad():
        losses = [task.loss(model(x), y).item() for x, y in batches]
    loss, diverged = transfer.train(model, optimizer, task, batches, tail=2)
    assert not diverged and loss == pytest.approx(sum(losses[-2:]) / 2, rel=1e-5)


def test_sweep_rows_and_a_diverging_rate():
    run = TransferRun(widths=(8, 16), lrs=(1e-3, 1e6), steps=4, tail=2, seeds=(0, 1))
    frame = transfer.sweep(run)
    assert list(frame.columns) == transfer.COLUMNS
    assert len(frame) == 2 * 2 * 2
    assert set(frame["width"]) == {8, 16} and set(frame["seed"]) == {0, 1}
    small, huge = frame[frame["lr"] == 1e-3], frame[frame["lr"] == 1e6]
    assert not small["diverged"].any() and small["loss"].between(0, 10).all()
    assert huge["diverged"].all() and (huge["loss"] == math.inf).all()
    pd.testing.assert_frame_equal(frame, transfer.sweep(run))  # seeded: the same numbers again
    assert (transfer.best_lr(frame)["lr"] == 1e-3).all()
