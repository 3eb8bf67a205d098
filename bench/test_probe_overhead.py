"""What tracing costs: ``probe.trace`` against a bare forward and backward of the same model, and the notebook's way.

The model is the notebook's depth experiment (``experiments.DEPTH_MLP`` with Xavier uniform: a 10-layer,
512-wide tanh MLP at batch 64). Five contenders share one group in pytest-benchmark's table:

- ``bare``: zero the grads, forward, ``mean()``, backward: the floor;
- ``hooks``: bare with the hooks trace registers (a forward hook per activation module that hooks its
  output's gradient, one per Linear for the pre-activation, a post-accumulate-grad hook per weight; no
  attention watch, since the MLP declares no attention), all doing nothing: what hooking costs before any
  statistic;
- ``trace``: ``initcore.probe.trace``, every statistic, the generic probe (any model) on the MLP's
  declared rows, one host copy;
- ``lean``: ``probe.trace(..., statistics="lean")``: each output's mean, std and rms and nothing of the
  backward pass (which still runs): the documented cheap selection (target: <= 1.10 x bare on CPU);
- ``precision``: ``probe.trace(..., statistics="precision")``: every statistic and the precision table
  (``initcore.probe.precision``: six formats, unscaled and per-tensor scaled, of each output, output
  gradient, weight and weight gradient); its ratio to ``trace`` in the same run is its cost, asserted on
  the CPU at most ``PRECISION_BOUND`` (see below: issue 21's 1.15 is not reachable on this CPU);
- ``notebook``: ``analyze_initialization_impact``'s loop, which clones every activation and calls
  ``.item()`` per number.

Each contender but bare also gets its time over bare into ``extra_info["ratio_to_bare"]``, and into the
end-of-run summary: the median over PAIRS rounds of (contender / bare) timed back to back, so load on a
shared machine hits both alike. On a 2-core VM single pairs spread by +-10%; the median of 20 still moved
by 0.1 between runs, that of 80 by about 0.03. One time is asserted: precision / trace on the CPU.

What the precision preset costs, measured 2026-12-07 on this 2-core VM (torch 2.13.0+cpu), with
``pytest bench/test_probe_overhead.py --benchmark-only -p no:cacheprovider -k "precision and cpu"``
(precision / trace, median of 80 back-to-back pairs): 1.846, 1.889, 1.831, 2.039 and 1.783 at load average
1.2-2.0 (2 torch threads), 1.616 under OMP_NUM_THREADS=1; the code before this session's counting,
side by side in the same minutes, 2.079. The quieter the machine, the higher: the trace's matmuls use
both cores, the counting one. A trace there is 40 tensors (20 of 262k entries, 20 of 32k); what each
part of the table costs, in CPU time of the thread at 1 torch thread under load 3-5 (a trace 19-20 ms):
the hooks, the table and the per-tensor Python, counting nothing, 1.07; plus one read of each tensor
(its |x| bits) 1.18; plus amax, 1.26; plus the mean and std, 1.38-1.43; plus the exact counts at every
format's keys, 1.72-1.79. One read of each tensor on the host already costs more than the 15% issue 21
aims at, so the bound asserted is what was measured with a margin for a machine quieter still: 2.5.
``trace`` and ``lean`` pay nothing for the preset: no precision code runs in them
(``test_a_trace_that_does_not_ask_for_precision_pays_nothing_for_it``).

    pytest bench/test_probe_overhead.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import pytest
import torch

from initcore import probe
from initcore.experiments import DEPTH_INITS, DEPTH_MLP, MLPRun
from initcore.probe import precision
from initcore.timing import synchronize

RUN = MLPRun(DEPTH_MLP, DEPTH_INITS["xavier"], batch=64)  # MLP 512 -> 512 x 10, tanh, Xavier uniform
ROUNDS, WARMUP = 20, 3
PAIRS = 80  # ~3 s a contender on a CPU; see the module docstring
CONTENDERS = ("bare", "hooks", "trace", "lean", "precision", "notebook")
PRECISION_BOUND = 2.5  # precision / trace on the CPU, asserted; measured, and why not 1.15: the module docstring


def bare(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).mean().backward()


def _nothing(*args) -> None:
    return None


def _hook_output(module, args, output) -> None:
    output.register_hook(_nothing)


def hooks(model: torch.nn.Module, x: torch.Tensor) -> None:
    """bare, under the hooks ``probe.trace`` registers on an MLP, registered and removed as it does."""
    last = len(model.layers) - 1
    outputs = [*model.acts[:last], model.layers[last]]  # the last layer's row is its Linear's own output
    handles = [m.register_forward_hook(_hook_output) for m in outputs]
    handles += [layer.register_forward_hook(_nothing) for layer in model.layers[:last]]  # pre-activations
    handles += [layer.weight.register_post_accumulate_grad_hook(_nothing) for layer in model.layers]
    try:
        model.zero_grad(set_to_none=True)
        model(x).mean().backward()
    finally:
        for handle in handles:
            handle.remove()


def traced(model: torch.nn.Module, x: torch.Tensor) -> pd.DataFrame:
    return probe.trace(model, x)


def lean(model: torch.nn.Module, x: torch.Tensor) -> pd.DataFrame:
    return probe.trace(model, x, statistics="lean")


def precision_contender(model: torch.nn.Module, x: torch.Tensor) -> pd.DataFrame:
    return probe.trace(model, x, statistics="precision")


def notebook(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """The reference notebook's analyze_initialization_impact, on ``model``'s layers, as it was written."""
    activations = []
    current_input = x
    for i, layer in enumerate(model.layers):
        current_input = layer(current_input)
        if i < len(model.layers) - 1:
            current_input = torch.tanh(current_input)
        activations.append(current_input.clone())
    activations[-1].mean().backward()
    stats = []
    for i, (activation, layer) in enumerate(zip(activations, model.layers, strict=True)):
        stats.append({
            "layer": i, "mean": activation.mean().item(), "std": activation.std().item(),
            "min": activation.min().item(), "max": activation.max().item(),
            "grad_mean": layer.weight.grad.mean().item(), "grad_std": layer.weight.grad.std().item(),
            "grad_norm": layer.weight.grad.norm().item(),
        })
    model.zero_grad()
    return stats


FUNCTIONS = {"bare": bare, "hooks": hooks, "trace": traced, "lean": lean, "precision": precision_contender,
             "notebook": notebook}


@pytest.fixture
def model_and_input(device: str, generator: torch.Generator):
    model, x = RUN.build(generator)
    assert model.config.activation == "tanh"  # the notebook contender applies torch.tanh itself
    return model.to(device), x.to(device)


def _synced(fn, model, x, device):
    def run():
        fn(model, x)
        synchronize(device)
    return run


def _paired_ratio(contender, reference, rounds: int) -> tuple[float, float, float]:
    """Median of contender/reference over ``rounds`` back-to-back pairs (order alternating), and both medians."""
    ratios, times_c, times_r = [], [], []
    for i in range(rounds):
        order = (reference, contender) if i % 2 == 0 else (contender, reference)
        spent = {}
        for fn in order:
            start = time.perf_counter()
            fn()
            spent[fn] = time.perf_counter() - start
        times_c.append(spent[contender])
        times_r.append(spent[reference])
        ratios.append(spent[contender] / spent[reference])
    return statistics.median(ratios), statistics.median(times_c), statistics.median(times_r)


@pytest.mark.benchmark(group="probe-overhead")
@pytest.mark.parametrize("contender", CONTENDERS)
def test_probe_overhead(benchmark, contender: str, device: str, model_and_input, summary_line) -> None:
    model, x = model_and_input
    run = _synced(FUNCTIONS[contender], model, x, device)
    benchmark.group = f"probe-overhead-{device}"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP)
    benchmark.extra_info.update({"model": RUN.key, "device": device, "threads": torch.get_num_threads()})
    if contender == "bare" or not benchmark.enabled:
        return
    ratio, median, bare_median = _paired_ratio(run, _synced(bare, model, x, device), PAIRS)
    benchmark.extra_info.update({"ratio_to_bare": ratio, "median_s": median, "bare_median_s": bare_median})
    summary_line(f"probe overhead, {contender} / bare forward+backward on {device}: {ratio:.3f} "
                 f"({median * 1e3:.2f} ms / {bare_median * 1e3:.2f} ms, median of {PAIRS} back-to-back pairs, "
                 f"{torch.get_num_threads()} threads)")
    if contender == "precision":  # what the table adds to a trace, timed against one in the same run
        ratio, median, trace_median = _paired_ratio(run, _synced(traced, model, x, device), PAIRS)
        benchmark.extra_info.update({"ratio_to_trace": ratio})
        summary_line(f"probe overhead, precision / trace on {device}: {ratio:.3f} ({median * 1e3:.2f} ms / "
                     f"{trace_median * 1e3:.2f} ms, median of {PAIRS} back-to-back pairs)")
        if device == "cpu":  # see PRECISION_BOUND: issue 21's 1.15 is not reachable on a CPU
            assert ratio <= PRECISION_BOUND, (f"the precision preset costs {ratio:.3f} x a trace on the CPU, past "
                                              f"{PRECISION_BOUND} (measured 1.6-2.04): profile precision.host_counts")


def test_contenders_measure_the_same_pass(device: str, model_and_input) -> None:
    # The comparison is fair only if the notebook's loop and trace see the same numbers.
    model, x = model_and_input
    frame = traced(model, x)  # leaves its gradients in place, as documented
    model.zero_grad(set_to_none=True)  # the notebook's loop zeroes only after it has read them
    reference = pd.DataFrame(notebook(model, x))
    assert len(frame) == len(reference) == RUN.model.depth
    pairs = {"act_mean": "mean", "act_std": "std", "act_min": "min", "act_max": "max", "grad_norm": "grad_norm",
             "grad_std": "grad_std"}
    for ours, theirs in pairs.items():
        torch.testing.assert_close(torch.tensor(frame[ours].to_numpy()), torch.tensor(reference[theirs].to_numpy()),
                                   rtol=1e-4, atol=1e-7, msg=f"{ours} differs from the notebook's {theirs}")
    cheap = lean(model, x)  # the same outputs' moments, nothing else
    pd.testing.assert_frame_equal(cheap[["module", "act_mean", "act_std"]], frame[["module", "act_mean", "act_std"]])
    assert cheap.drop(columns=["module", "kind", "layer", "act_mean", "act_std", "act_rms"]).isna().all().all()


def test_a_trace_that_does_not_ask_for_precision_pays_nothing_for_it(device: str, model_and_input,
                                                                    monkeypatch) -> None:
    # "nothing to a trace that does not ask for it", structurally: without the preset no precision code runs
    # (no hook of its, no count), so the trace and lean contenders time exactly what they did before it
    model, x = model_and_input

    def refuse(*args, **kwargs):
        raise AssertionError("precision code ran in a trace that did not ask for it")

    for name in ("trace", "counts", "host_counts", "device_counts", "_table"):
        monkeypatch.setattr(precision, name, refuse)
    for frame in (traced(model, x), lean(model, x), probe.trace(model, x, statistics="forward")):
        assert "precision" not in frame.attrs
    with pytest.raises(AssertionError, match="precision code ran"):  # the guard itself can fail
        precision_contender(model, x)


def test_hooks_contender_runs_every_hook_trace_would(device: str, model_and_input, monkeypatch) -> None:
    # The hooks contender is a floor only if each of its hooks fires once, as trace's do, and all go.
    model, x = model_and_input
    calls = []
    monkeypatch.setitem(globals(), "_nothing", lambda *args: calls.append(len(args)))
    hooks(model, x)
    depth = RUN.model.depth
    # per layer: an output-gradient hook and a weight hook; per hidden layer a pre-activation hook
    assert len(calls) == 3 * depth - 1
    assert not any(m._forward_hooks for m in [*model.acts, *model.layers])
    assert all(layer.weight.grad is not None for layer in model.layers)
