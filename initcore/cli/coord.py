"""``initcore coord``: the coordinate check over training steps (``initcore.coord``): train at several widths,
print how much each layer's output moved per step, the fitted slope against width and its verdict, draw mup's
figure; exit 1 when a coordinate grows with width. ``--model package.module:factory`` checks a model of
yours, built by ``factory(seed, width) -> (model, inputs)`` (see ``initcore.coord``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from initcore import coord
from initcore.cli import _factory
from initcore.cli._common import did_you_mean, positive_float, positive_int, print_frame, seed, strategy
from initcore.cli._roles import add_roles_option, cli_words, parse_roles
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


def model(text: str) -> str:
    """``--model``: a built-in family, or ``package.module:factory``."""
    if text in coord.MODELS or _factory.is_reference(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; valid: {', '.join(coord.MODELS)}, or "
                                     "package.module:factory, a factory(seed, width) -> (model, inputs) of yours"
                                     f"{did_you_mean(text, coord.MODELS)}")


def exception(text: str) -> str:
    """``--allow``: one ``COORDINATE[@tSTEP]`` pattern."""
    try:
        return coord.check_exceptions((text,))[0]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "coord", help="coordinate check: how much each layer moves in k training steps, against width",
        description="Train a fresh model at each width for --steps steps on a fixed small task and print, per "
                    "layer and step, rms(h_t - h_0) at each width, the slope of its log against log(width) and a "
                    "verdict: flat under muP, growing under the standard parametrization (Yang et al., 2021). "
                    "Writes mup's figure, one panel per step, to DIR/coord-MODEL-INIT-OPTIMIZER.png beside its CSV.",
        epilog="Exit status: 0 when no coordinate grows with width (slope > --max-slope) or turns non-finite, 1 "
               "when one does, 2 on bad input or, unless --no-plot, without matplotlib.")
    p.add_argument("--model", type=model, default="mlp", metavar="NAME|MODULE:FACTORY",
                   help=f"{', '.join(coord.MODELS)} (default mlp), or package.module:factory, a callable of yours "
                        "called as factory(seed, width) that returns (model, inputs) or (model, inputs, targets), "
                        "its inputs drawn from the seed alone (the same at every width); the current folder is "
                        "importable")
    p.add_argument("--init", type=strategy, default=None, metavar="NAME",
                   help="init strategy (see `initcore list`); mup trains with muP's parameter groups, every other "
                        "strategy with one learning rate; default: mup, or for a model of yours its factory's own "
                        "init (with one learning rate)")
    p.add_argument("--max-slope", type=positive_float, default=coord.MAX_SLOPE, metavar="S",
                   help=f"a coordinate whose slope exceeds S grows with width and fails; default {coord.MAX_SLOPE:g}")
    p.add_argument("--allow", type=exception, action="append", default=[], metavar="COORD[@tSTEP]",
                   help="a coordinate the verdict lets be (fnmatch pattern, e.g. output@t1 or '*:logits'); "
                        "repeatable")
    p.add_argument("--widths", type=widths, default=DEFAULT_WIDTHS, metavar="W1,W2,...",
                   help=f"default: {','.join(map(str, DEFAULT_WIDTHS))}")
    p.add_argument("--steps", type=positive_int, default=3, help="optimizer steps, 1..100; default: 3")
    p.add_argument("--optimizer", choices=coord.OPTIMIZERS, default="adam", help="default: adam")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"learning rate; default: {coord.DEFAULT_LR['adam']:g} (adam), {coord.DEFAULT_LR['sgd']:g} "
                        "(sgd)")
    p.add_argument("--base-width", type=positive_int, default=None,
                   help="mup: the width its learning rate is tuned at; default: the smallest width")
    add_roles_option(p)
    p.add_argument("--seed", type=seed, default=0, help="seeds the task and the weights (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    p.add_argument("--format", choices=("table", "csv"), default="table", help="default: table")
    p.add_argument("--out", default="report", metavar="DIR", help="folder for the figure and its CSV; default: report")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    return p


def _parameters(run: coord.CoordRun, width: int) -> int | None:
    if run.is_factory:
        return None  # a model of yours: its size is its factory's
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
    sizes = {w: _parameters(run, w) for w in run.widths}
    if sizes[run.widths[-1]] is None:
        return
    need = COPIES * 4 * sizes[run.widths[-1]]
    if need > available:
        fits = [w for w in run.widths if COPIES * 4 * sizes[w] <= available]
        hint = f"the widths up to {fits[-1]} fit" if fits else "none of these widths fits"
        raise ValueError(f"--widths: a step at width {run.widths[-1]} needs ~{need / 2**30:.1f} GiB, "
                         f"{available / 2**30:.1f} GiB is available on {device}; {hint}")


def _figure(frame, title: str, verdicts) -> bytes:
    import io

    from matplotlib.figure import Figure

    steps = int(frame["step"].max()) + 1
    names = coord.coordinates(frame)["coordinate"].nunique()
    legend = 0.4 + 0.07 * max(map(len, coord.coordinates(frame)["coordinate"]))  # inches beside the panels
    fig = Figure(figsize=(3.2 * steps + legend, max(3.6, 1.2 + 0.2 * names)), layout="constrained")
    coord.draw(fig, frame, title=title, verdicts=verdicts)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _run_of(args: argparse.Namespace) -> coord.CoordRun:
    if _factory.is_reference(args.model):
        if args.roles is not None and args.init is None:
            raise ValueError("--roles goes with --init: without it the factory's own init runs, and no roles are read")
        factory = _factory.resolve(args.model)
        return coord.CoordRun(factory, args.init, args.optimizer, args.widths, args.steps, args.lr, args.base_width,
                              exceptions=tuple(args.allow), roles=tuple((parse_roles(args.roles) or {}).items()))
    if args.roles is not None:
        raise ValueError(f"--roles does not apply to --model {args.model}, whose modules declare their roles; it is "
                         "for a model of yours (--model package.module:factory)")
    return coord.CoordRun(args.model, args.init or "mup", args.optimizer, args.widths, args.steps, args.lr,
                          args.base_width, exceptions=tuple(args.allow))


def _measure(run: coord.CoordRun, args: argparse.Namespace):
    """``coord.measure``; a model of yours that raises is bad input, one line naming --model."""
    if not run.is_factory:
        return coord.measure(run, args.seed, args.device)
    try:
        return coord.measure(run, args.seed, args.device)
    except ValueError as e:
        raise ValueError(f"--model {args.model}: {cli_words(' '.join(str(e).split()))}") from None
    except Exception as e:  # the factory, its forward or its backward: the user's code, not ours
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"--model {args.model}: {type(e).__name__}: {first or '(no message)'} (in factory(seed, "
                         f"width) or the model's forward/backward at --widths {','.join(map(str, run.widths))})"
                         ) from None


def run(args: argparse.Namespace) -> int:
    from initcore import report

    run = _run_of(args)
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
    frame = _measure(run, args)
    init_name = f"init {run.init}" if run.init else "its own init"
    title = (f"{run.name}, {init_name}, {run.optimizer} lr {run.learning_rate:g}"
             + (f", base width {run.base}" if run.init == "mup" else "") + f", seed {args.seed}")
    verdicts = coord.verdicts(frame, args.max_slope, run.exceptions)
    table = coord.table(frame, args.max_slope, run.exceptions)
    if args.format == "table":
        print(f"# coordinate check: {title}; rms(h_t - h_0) per width (logits: their std), slope of log against "
              "log(width)")
    print_frame(table, args.format)
    if not args.no_plot:
        name = run.name.replace(":", "_").replace(".", "_") if run.is_factory else run.model
        stem = f"coord-{name}-{(run.init or 'own').replace(':', '_')}-{run.optimizer}"
        atomic_write(out / f"{stem}.png", _figure(frame, title, verdicts))
        atomic_write(out / f"{stem}.csv", table.to_csv(index=False).encode())
        if args.format == "table":
            print(f"wrote {out / stem}.png and .csv")
    failing = verdicts[verdicts["verdict"].isin(coord.FAILING)]
    if args.format == "table":
        if len(failing):
            worst = ", ".join(f"{r.coordinate}@t{r.step} ({r.verdict}, slope {r.slope:+.2f})"
                              for r in failing.head(4).itertuples())
            more = f" and {len(failing) - 4} more" if len(failing) > 4 else ""
            print(f"# FAIL: {len(failing)} coordinate(s) grow with width (slope > {args.max_slope:g}) or are not "
                  f"finite: {worst}{more}")
        else:
            print(f"# pass: no coordinate grows with width (every slope <= {args.max_slope:g}"
                  + (f", except {', '.join(run.exceptions)}" if run.exceptions else "") + ")")
    return 1 if len(failing) else 0
