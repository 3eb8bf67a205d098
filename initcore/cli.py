"""The ``initcore`` command line: ``trace`` a model at init layer by layer, ``diagnose`` it, draw the
notebook's figures as a ``report``, ``list`` what there is.

Adding a command: write ``_add_<name>(subparsers)`` (reuse ``add_model_options`` and
``build_model_and_inputs`` for a model), a handler ``(args) -> exit status``, call the former in
``build_parser`` and put the latter in ``HANDLERS``. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

import pandas as pd
import torch

from initcore import compare, init, probe
from initcore.experiments import DEPTH_MLP, MLPRun
from initcore.models import ACTIVATIONS, MODELS, MLPConfig, TorchMHATransformer, Transformer, param_roles
from initcore.models.transformer import FFNS, NORM_POSITIONS, NORMS

# MLP defaults: the notebook's depth experiment, experiments.DEPTH_MLP (512 wide, 10 deep, tanh) at batch 64.
MLP_BATCH = 64
# A small transformer that traces in well under a second on a CPU (experiments has none this size).
TRANSFORMER = {"d_model": 128, "n_heads": 4, "d_ff": 512, "n_layers": 4, "seq_len": 32, "vocab_size": 1000}
TRANSFORMER_BATCH = 8


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (``initcore: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"initcore: error: {' '.join(message.split())}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _strategy(text: str) -> str:
    try:
        init.get(text)  # validates normal:STD as well as the registered names
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _gain(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number or 'auto', got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose a model, its init and its inputs (``trace``, ``diagnose``, ...)."""
    g = parser.add_argument_group("model and init")
    g.add_argument("--model", choices=MODELS, default="mlp", help="default: mlp")
    g.add_argument("--init", type=_strategy, default="torch_default", metavar="NAME",
                   help="init strategy (see `initcore list`; normal:STD for any std); default: torch_default")
    g.add_argument("--gain", type=_gain, default=None, metavar="G|auto",
                   help="gain for strategies that take one; auto: calculate_gain of the activation")
    g.add_argument("--bias", type=_finite, default=None, metavar="B0",
                   help="after the strategy, fill every bias with this constant (transformers: norm biases too)")
    g.add_argument("--batch", type=_positive_int, default=None,
                   help=f"batch size; default {MLP_BATCH} (mlp), {TRANSFORMER_BATCH} (transformers)")
    g.add_argument("--seed", type=int, default=0, help="seeds weights and inputs (default 0)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    m = parser.add_argument_group("mlp")
    m.add_argument("--width", type=_positive_int, default=DEPTH_MLP.width, help=f"default {DEPTH_MLP.width}")
    m.add_argument("--depth", type=_positive_int, default=DEPTH_MLP.depth,
                   help=f"number of Linear layers, default {DEPTH_MLP.depth}")
    m.add_argument("--activation", choices=ACTIVATIONS, default=DEPTH_MLP.activation,
                   help=f"default: {DEPTH_MLP.activation}")
    m.add_argument("--in-features", type=_positive_int, default=None, help="input size; default: --width")
    t = parser.add_argument_group("transformer (--model transformer | torch_mha_transformer)")
    for option in ("vocab-size", "d-model", "n-heads", "d-ff", "n-layers", "seq-len"):
        default = TRANSFORMER[option.replace("-", "_")]
        t.add_argument(f"--{option}", type=_positive_int, default=default, help=f"default {default}")
    t.add_argument("--norm", choices=NORMS, default="layernorm", help="default: layernorm")
    t.add_argument("--norm-position", choices=NORM_POSITIONS, default="pre", help="default: pre")
    t.add_argument("--ffn", choices=FFNS, default="relu", help="default: relu")
    t.add_argument("--causal", action="store_true", help="causal attention mask")


def build_model_and_inputs(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of ``args`` initialized by ``args.init``, and its inputs, both on ``args.device``.

    As ``initcore.experiments`` builds its runs (an MLP through ``MLPRun.build``, so a trace here
    matches bench's for the same configuration and seed): weights, then inputs, drawn on the CPU from
    one ``torch.Generator`` seeded with ``args.seed``, then moved, so every device starts from the same
    numbers. Raises ValueError on anything the library rejects (sizes, gain, device).
    """
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    gen = torch.Generator().manual_seed(args.seed)
    if args.model == "mlp":
        config = MLPConfig(args.in_features or args.width, args.width, args.depth, args.activation)
        run = MLPRun(config, args.init, batch=args.batch or MLP_BATCH, gain=args.gain, bias=args.bias)
        model, inputs = run.build(gen)
    else:  # TransformerRun.build, plus --gain and --bias, which it does not take
        cls = Transformer if args.model == "transformer" else TorchMHATransformer
        model = cls(args.vocab_size, args.d_model, args.n_heads, args.d_ff, args.n_layers, args.norm,
                    args.norm_position, args.ffn, causal=args.causal)
        init.apply(model, args.init, gain=args.gain, generator=gen)
        if args.bias is not None:
            with torch.no_grad():
                for p in param_roles(model):
                    if p.role == "bias":
                        p.param.fill_(args.bias)
        inputs = torch.randint(0, args.vocab_size, (args.batch or TRANSFORMER_BATCH, args.seq_len), generator=gen)
    return model.to(args.device), inputs.to(args.device)


def _print_frame(frame: pd.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", double_precision=10) + "\n")
    else:
        shown = frame.dropna(axis=1, how="all")  # an MLP has no attention columns, and so on
        sys.stdout.write(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n")


# --- trace -----------------------------------------------------------------------------------------


def _add_trace(subparsers) -> None:
    p = subparsers.add_parser("trace", help="per-layer statistics of one forward and backward pass at init",
                              description="Trace one forward and backward pass of a freshly initialized model "
                                          "and print per-layer statistics (see initcore.probe.STATISTICS).")
    add_model_options(p)
    p.add_argument("--loss", choices=probe.LOSSES, default=None,
                   help="mean (the notebook's), square, or random (a fixed random projection); default: mean "
                        "for an mlp, random for transformers, whose final norm leaves mean and square flat")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="default: table")
    p.add_argument("--theory", action="store_true",
                   help="mlp: add mean-field predictions (preact_std_theory, ...) beside the measured columns")


def _trace(args: argparse.Namespace) -> int:
    if args.theory and args.model != "mlp":
        raise ValueError("--theory predicts MLPs only; use --model mlp")
    model, inputs = build_model_and_inputs(args)
    if args.theory:  # before the trace, so that a strategy theory does not know fails at once
        gain = init.activation_gain(model) if args.gain == "auto" else args.gain
        predicted = probe.mlp_theory(model, args.init, gain=gain, bias=args.bias or 0.0)
    loss = args.loss or ("mean" if args.model == "mlp" else "random")
    frame = probe.trace(model, inputs, loss=loss)
    if args.theory:
        frame = probe.with_theory(frame, predicted)
    if args.format == "table":
        print(f"# {_describe(args)}, loss {loss}")
    _print_frame(frame, args.format)
    return 0


def _describe(args: argparse.Namespace) -> str:
    if args.model == "mlp":
        size = f"mlp {args.in_features or args.width}->{args.width} x{args.depth} {args.activation}"
    else:
        size = (f"{args.model} d_model {args.d_model}, {args.n_heads} heads, d_ff {args.d_ff}, "
                f"{args.n_layers} layers, seq {args.seq_len}, {args.norm_position}-{args.norm}, {args.ffn}"
                + (", causal" if args.causal else ""))
    gain = "" if args.gain is None else f" gain {args.gain}"
    bias = "" if args.bias is None else f", bias {args.bias}"
    return f"{size}, init {args.init}{gain}{bias}, seed {args.seed}, {args.device}"


# --- list ------------------------------------------------------------------------------------------


def _add_list(subparsers) -> None:
    subparsers.add_parser("list", help="the init strategies, models and activations",
                          description="Print the init strategies (with summaries), models and activations.")


def _list(args: argparse.Namespace) -> int:
    strategies = init.describe()
    width = max(map(len, strategies))
    print("strategies:")
    for name, summary in strategies.items():
        print(f"  {name:<{width}}  {summary}")
    print("models: " + ", ".join(MODELS))
    print("activations: " + ", ".join(ACTIVATIONS))
    return 0


# --- compare ---------------------------------------------------------------------------------------


def _add_compare(subparsers) -> None:
    p = subparsers.add_parser("compare", help="timings from pytest-benchmark JSON: CPU vs CUDA, or two runs' ratios",
                              description="One file: a table per case and pass with CPU ms, CUDA ms, speedup, "
                                          "GFLOP/s and the fraction of the device's matmul rate. Two files: each "
                                          "benchmark's median ratio OTHER/RESULTS; exit 1 past --threshold.")
    compare.add_arguments(p)


# --- diagnose --------------------------------------------------------------------------------------


def _add_diagnose(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose", help="name the symptoms of a model at init, their evidence and fixes",
        description="Trace one forward and backward pass of a freshly initialized model (the options of "
                    "`initcore trace`) and name each symptom of initcore.diagnose.SYMPTOMS found in it, with its "
                    "evidence and first fixes, or say that it is healthy.",
        epilog="Exit status: 0 whether or not symptoms are found (a diagnosis is a report, not a test; use "
               "--format json to act on it), 2 on bad input.")
    add_model_options(p)
    p.add_argument("--loss", choices=probe.LOSSES, default=None,
                   help="as for trace; default: mean for an mlp, random for transformers")
    p.add_argument("--fixes", type=int, default=2, metavar="N", help="fixes shown per symptom (default 2)")
    p.add_argument("--health", action="store_true",
                   help="also print the notebook's per-layer health report (mean, std, range, issues) of every "
                        "nn.Linear and nn.MultiheadAttention output (initcore.health)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or json: one record per symptom found")


def _diagnose(args: argparse.Namespace) -> int:
    from initcore import diagnose

    if args.fixes < 0:
        raise ValueError(f"--fixes must be >= 0, got {args.fixes}")
    model, inputs = build_model_and_inputs(args)
    loss = args.loss or ("mean" if args.model == "mlp" else "random")
    frame = probe.trace(model, inputs, loss=loss)
    findings = diagnose.diagnose(frame)
    if args.format == "json":
        sys.stdout.write(findings.to_json(orient="records", double_precision=10) + "\n")
        return 0
    print(f"# {_describe(args)}, loss {loss}")
    sys.stdout.write(diagnose.format_findings(findings, n_fixes=args.fixes))
    if args.health:
        from initcore import health

        sys.stdout.write("\n" + diagnose.format_health(health.health_report(model, inputs)))
    return 0


# --- report ----------------------------------------------------------------------------------------


def _add_report(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="the notebook's figures from the probe, with theory, as PNGs and an index.html",
        description="Run the experiments of initcore.experiments, write each figure as DIR/<name>.png with its "
                    "table as DIR/<name>.csv, and DIR/index.html to open in a browser. Needs matplotlib "
                    "(pip install 'initcore[plot]').",
        epilog="Exit status: 0 when written, 2 on bad input or without matplotlib.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and inputs (default 0)")


def _report(args: argparse.Namespace) -> int:
    from initcore import report

    try:
        index = report.write_report(args.out, seed=args.seed)
    except report.PlottingUnavailable as e:
        print(f"initcore: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out
        raise ValueError(f"--out {args.out}: {e.strerror or e}") from None
    print(f"wrote {index} (open it in a browser)")
    return 0


# --- entry point -----------------------------------------------------------------------------------

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"trace": _trace, "list": _list, "compare": compare.run,
                                                           "diagnose": _diagnose, "report": _report}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initcore", description="Does your network still propagate signal at init?")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_trace(subparsers)
    _add_list(subparsers)
    _add_compare(subparsers)
    _add_diagnose(subparsers)
    _add_report(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2, via SystemExit, on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except ValueError as e:  # the library's word on bad sizes, strategies, gains: one line, no traceback
        parser.error(str(e))
        raise AssertionError("parser.error exits") from e
