"""What the commands of ``initcore.cli`` share: the parser class, option types, the options that choose a
model (``add_model_options``), building that model and its inputs, describing it and printing a frame."""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd
import torch

from initcore import init
from initcore.experiments import DEPTH_MLP, MLPRun
from initcore.models import ACTIVATIONS, MODELS, MLPConfig, TorchMHATransformer, Transformer, param_roles
from initcore.models.transformer import FFNS, NORM_POSITIONS, NORMS

# MLP defaults: the notebook's depth experiment, experiments.DEPTH_MLP (512 wide, 10 deep, tanh) at batch 64.
MLP_BATCH = 64
# A small transformer that traces in well under a second on a CPU (experiments has none this size).
TRANSFORMER = {"d_model": 128, "n_heads": 4, "d_ff": 512, "n_layers": 4, "seq_len": 32, "vocab_size": 1000}
TRANSFORMER_BATCH = 8


class CliParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (``initcore: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"initcore: error: {' '.join(message.split())}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def strategy(text: str) -> str:
    try:
        init.get(text)  # validates normal:STD as well as the registered names
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def gain(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number or 'auto', got {text!r}")
    return value


def finite(text: str) -> float:
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
    g.add_argument("--init", type=strategy, default="torch_default", metavar="NAME",
                   help="init strategy (see `initcore list`; normal:STD for any std); default: torch_default")
    g.add_argument("--gain", type=gain, default=None, metavar="G|auto",
                   help="gain for strategies that take one; auto: calculate_gain of the activation")
    g.add_argument("--bias", type=finite, default=None, metavar="B0",
                   help="after the strategy, fill every bias with this constant (transformers: norm biases too)")
    g.add_argument("--batch", type=positive_int, default=None,
                   help=f"batch size; default {MLP_BATCH} (mlp), {TRANSFORMER_BATCH} (transformers)")
    g.add_argument("--seed", type=int, default=0, help="seeds weights and inputs (default 0)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    m = parser.add_argument_group("mlp")
    m.add_argument("--width", type=positive_int, default=DEPTH_MLP.width, help=f"default {DEPTH_MLP.width}")
    m.add_argument("--depth", type=positive_int, default=DEPTH_MLP.depth,
                   help=f"number of Linear layers, default {DEPTH_MLP.depth}")
    m.add_argument("--activation", choices=ACTIVATIONS, default=DEPTH_MLP.activation,
                   help=f"default: {DEPTH_MLP.activation}")
    m.add_argument("--in-features", type=positive_int, default=None, help="input size; default: --width")
    t = parser.add_argument_group("transformer (--model transformer | torch_mha_transformer)")
    for option in ("vocab-size", "d-model", "n-heads", "d-ff", "n-layers", "seq-len"):
        default = TRANSFORMER[option.replace("-", "_")]
        t.add_argument(f"--{option}", type=positive_int, default=default, help=f"default {default}")
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


def print_frame(frame: pd.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", double_precision=10) + "\n")
    else:
        shown = frame.dropna(axis=1, how="all")  # an MLP has no attention columns, and so on
        sys.stdout.write(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n")




def describe(args: argparse.Namespace) -> str:
    """One line naming the model, init, seed and device of ``args`` (the first line of a table)."""
    if args.model == "mlp":
        size = f"mlp {args.in_features or args.width}->{args.width} x{args.depth} {args.activation}"
    else:
        size = (f"{args.model} d_model {args.d_model}, {args.n_heads} heads, d_ff {args.d_ff}, "
                f"{args.n_layers} layers, seq {args.seq_len}, {args.norm_position}-{args.norm}, {args.ffn}"
                + (", causal" if args.causal else ""))
    gain = "" if args.gain is None else f" gain {args.gain}"
    bias = "" if args.bias is None else f", bias {args.bias}"
    return f"{size}, init {args.init}{gain}{bias}, seed {args.seed}, {args.device}"


def default_loss(args: argparse.Namespace) -> str:
    """``--loss``, else mean for an MLP (the notebook's) and random for transformers (their final norm
    leaves mean and square flat)."""
    return args.loss or ("mean" if args.model == "mlp" else "random")
