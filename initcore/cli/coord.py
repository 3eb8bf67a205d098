"""``initcore coord``: the coordinate check over training steps (``initcore.coord``): train at several widths,
print how much each layer's output moved per step and the fitted slope against width, draw mup's figure."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from initcore import coord
from initcore.cli._common import positive_float, positive_int, print_frame, seed, strategy
from initcore.files import atomic_write

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)
# Per element of the widest model, what a step holds: parameter, gradient, W_0 copy and Adam's two moments.
COPIES = 5


def widths(text: str) -> tuple[int, ...]:
    """``64,128,256`` -> (64, 128, 256): two or more distinct positive integers, increasing."""
    parts = text.replace(" ", "").split(",")
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) < 2:
        raise argparse.ArgumentTypeError(f"must be two or more positive integers separated by commas, got {text!r}")
    values = tuple(int(p) for p in parts)
    if list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"must be distinct and increasing, got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "coord", help="coordinate check: how much each layer moves in k training steps, against width",
        description="Train a fresh model at each width for --steps steps on a fixed small task and print, per "
                    "layer and step, rms(h_t - h_0) at each width and the slope of its log against log(width): "
                    "~0 under muP, growing under the standard parametrization (Yang et al., 2021). Writes mup's "
                    "figure, one panel per step, to DIR/coord-MODEL-INIT-OPTIMIZER.png beside its CSV.",
        epilog="Exit status: 0 when done, 2 on bad input or, unless --no-plot, without matplotlib.")
    p.add_argument("--model", choices=coord.MODELS, default="mlp", help="default: mlp")
    p.add_argument("--init", type=strategy, default="mup", metavar="NAME",
                   help="init strategy (see `initcore list`); mup trains with muP's parameter groups, every other "
                        "strategy with one learning rate; default: mup")
    p.add_argument("--widths", type=widths, default=DEFAULT_WIDTHS, metavar="W1,W2,...",
                   help=f"default: {','.join(map(str, DEFAULT_WIDTHS))}")
    p.add_argument("--steps", type=positive_int, default=3, help="optimizer steps, 1..100; default: 3")
    p.add_argument("--optimizer", choices=coord.OPTIMIZERS, default="adam", help="default: adam")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"learning rate; default: {coord.DEFAULT_LR['adam']:g} (adam), {coord.DEFAULT_LR['sgd']:g} "
                        "(sgd)")
    p.add_argument("--base-width", type=positive_int, default=None,
                   help="mup: the width its learning rate is tuned at; default: the smallest width")
    p.add_argument("--seed", type=seed, default=0, help="seeds the task and the weights (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    p.add_argument("--format", choices=("table", "csv"), default="table", help="default: table")
    p.add_argument("--out", default="report", metavar="DIR", help="folder for the figure and its CSV; default: report")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    return p


def _parameters(run: coord.CoordRun, width: int) -> int:
    task = run.task()
    if run.model == "mlp":
        return task.in_features * width + (task.depth - 1) * width * width
    d_ff = task.ff_ratio * width
    return 2 * task.vocab_size * width + task.n_layers * (4 * width * width + 2 * width * d_ff)


def check_memory(run: coord.CoordRun, device: str) -> None:
    """ValueError, before any work, when the widest model's step cannot fit in the device's memory."""
    if device == "cuda":
        available = torch.cuda.mem_get_info()[0]
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = COPIES * 4 * _parameters(run, run.widths[-1])
    if need > available:
        fits = [w for w in run.widths if COPIES * 4 * _parameters(run, w) <= available]
        hint = f"the widths up to {fits[-1]} fit" if fits else "none of these widths fits"
        raise ValueError(f"--widths: a step at width {run.widths[-1]} needs ~{need / 2**30:.1f} GiB, "
                         f"{available / 2**30:.1f} GiB is available on {device}; {hint}")


def _figure(frame, title: str) -> bytes:
    import io

    from matplotlib.figure import Figure

    steps = int(frame["step"].max()) + 1
    fig = Figure(figsize=(3.2 * steps, 3.6), layout="constrained")
    coord.draw(fig, frame, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from initcore import report

    run = coord.CoordRun(args.model, args.init, args.optimizer, args.widths, args.steps, args.lr, args.base_width)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    check_memory(run, args.device)
    out = Path(args.out)
    if not args.no_plot:  # everything that can fail is checked before the training
        try:
            report.require_matplotlib()
        except report.PlottingUnavailable as e:
            print(f"initcore: error: {e} (or pass --no-plot)", file=sys.stderr)
            return 2
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {args.out}: {e.strerror or e}") from None
    frame = coord.measure(run, args.seed, args.device)
    title = (f"{run.model}, init {run.init}, {run.optimizer} lr {run.learning_rate:g}"
             + (f", base width {run.base}" if run.init == "mup" else "") + f", seed {args.seed}")
    table = coord.table(frame)
    if args.format == "table":
        print(f"# coordinate check: {title}; rms(h_t - h_0) per width (logits: their std), slope of log against "
              "log(width)")
    print_frame(table, args.format)
    if not args.no_plot:
        stem = f"coord-{run.model}-{run.init.replace(':', '_')}-{run.optimizer}"
        atomic_write(out / f"{stem}.png", _figure(frame, title))
        atomic_write(out / f"{stem}.csv", table.to_csv(index=False).encode())
        if args.format == "table":
            print(f"wrote {out / stem}.png and .csv")
    return 0
