"""What the commands of ``initcore.cli`` share: the parser class, option types, the options that choose a
model (``add_model_options``), checking them, building that model and its inputs, describing it and
printing a frame within 120 columns."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import sys
import textwrap
from collections.abc import Iterator

import pandas as pd
import torch

from initcore import init
from initcore.cli import _factory, _memory, _roles
from initcore.cli._roles import add_roles_option, cli_words, parse_roles
from initcore.experiments import DEPTH_MLP, SMALL_TRANSFORMER, VARIANT_RUNS, MLPRun
from initcore.models import (
    ACTIVATIONS,
    MODELS,
    MLPConfig,
    TorchMHATransformer,
    Transformer,
    TransformerConfig,
    param_roles,
)
from initcore.models.transformer import FFNS, NORM_POSITIONS, NORMS

# MLP defaults: the notebook's depth experiment, experiments.DEPTH_MLP (512 wide, 10 deep, tanh) at batch 64.
MLP_BATCH = 64
# Transformer defaults: experiments.SMALL_TRANSFORMER (the variants' base: 4 blocks, d_model 128) at its runs'
# sequence length, 32; it traces in well under a second on a CPU. Batch 8, the CLI's own choice.
TRANSFORMER = {**{k: getattr(SMALL_TRANSFORMER, k) for k in ("d_model", "n_heads", "d_ff", "n_layers", "vocab_size")},
               "seq_len": VARIANT_RUNS["prenorm"].seq_len}
TRANSFORMER_BATCH = 8
DEFAULT_INIT = "torch_default"  # of the built-in models; a model of the user's keeps its factory's init
LINE_WIDTH = 120  # the project's line length, for tables too

SIZE_MAX = 2**63 - 1  # torch sizes are int64: a larger one is no size at all (and keeps estimates finite)
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0..2**64-1 (and negatives, aliases of those)

# Which model-specific options apply to which kind of model; the rest of add_model_options applies to all.
MLP_OPTIONS = ("--width", "--depth", "--activation", "--in-features", "--batch")
TRANSFORMER_OPTIONS = ("--vocab-size", "--d-model", "--n-heads", "--d-ff", "--n-layers", "--seq-len", "--batch",
                       "--norm", "--norm-position", "--ffn", "--causal")
USER_OPTIONS = ("--input-shape", "--vocab", "--roles")
_SPECIFIC = {"mlp": MLP_OPTIONS, "transformer": TRANSFORMER_OPTIONS, "user": USER_OPTIONS}


class CliParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (``initcore: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"initcore: error: {' '.join(message.split())}\n")


# --- option types: each raises ArgumentTypeError naming the valid range (argparse adds the option) -----


def integer_in(text: str, low: int, high: int, why: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high}{why}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return integer_in(text, 1, SIZE_MAX)


def seed(text: str) -> int:
    return integer_in(text, 0, SEED_MAX, " (torch.Generator.manual_seed's range)")


def non_negative_int(text: str) -> int:
    return integer_in(text, 0, SIZE_MAX)


def shape(text: str) -> tuple[int, ...]:
    """``8,3,32,32`` -> (8, 3, 32, 32): positive sizes, batch first."""
    parts = text.replace(" ", "").split(",")
    if not all(p.isdigit() and 1 <= int(p) <= SIZE_MAX for p in parts):
        raise argparse.ArgumentTypeError(f"must be positive sizes separated by commas, batch first "
                                         f"(e.g. 8,3,32,32), got {text!r}")
    return tuple(int(p) for p in parts)


def strategy(text: str) -> str:
    try:
        init.get(text)  # validates normal:STD as well as the registered names
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def gain(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'auto', got {text!r}") from None


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def did_you_mean(text: str, choices) -> str:
    """``"; did you mean a, b?"`` for the choices close to ``text`` (difflib), else '': the end of a message
    that has listed what is valid."""
    close = difflib.get_close_matches(text, list(choices), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def model_name(text: str) -> str:
    """A built-in model's name, or ``package.module:factory`` (resolved when the model is built)."""
    if text in MODELS or _factory.is_reference(text):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(MODELS)}, or "
                                     f"package.module:factory for a model of your own){did_you_mean(text, MODELS)}")


# --- which options the user gave (a default is not a choice) -------------------------------------------


class Given(argparse.Action):
    """Store the value, and record the option as given (``given(args)``), so that an option that does not
    apply to the chosen model is refused when typed, while its default stays harmless."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given_options = {*getattr(namespace, "given_options", ()), self.option_strings[-1]}


class GivenFlag(Given):
    """``store_true`` that records the flag as given."""

    def __init__(self, option_strings, dest, default=False, help=None) -> None:  # noqa: A002 (argparse's name)
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, True, option_string)


def given(args: argparse.Namespace) -> set[str]:
    """The model options typed on the command line (long forms), whatever their values."""
    return set(getattr(args, "given_options", ()))


def add_model_options(parser: argparse.ArgumentParser, default_model: str | None = "mlp",
                      model_help: str = "default mlp", roles: bool = False) -> None:
    """The options that choose a model, its init and its inputs (``trace``, ``diagnose``, ``report``); with
    ``roles``, ``--roles`` too (``add_roles_option``), for a command whose --init reaches a model of yours."""
    g = parser.add_argument_group("model and init")
    g.add_argument("--model", type=model_name, action=Given, default=default_model, metavar="NAME|MODULE:FACTORY",
                   help=f"{', '.join(MODELS)} ({model_help}), or package.module:factory, a callable of yours "
                        "returning an nn.Module or (nn.Module, inputs), called as factory(seed) if it takes an "
                        "argument, else factory(); the current folder is importable")
    g.add_argument("--init", type=strategy, action=Given, default=None, metavar="NAME",
                   help=f"init strategy (see `initcore list`; normal:STD for any std); default: {DEFAULT_INIT}, "
                        "or for a model of yours its factory's own init")
    if roles:
        add_roles_option(g)
    g.add_argument("--gain", type=gain, action=Given, default=None, metavar="G|auto",
                   help="gain for strategies that take one; auto: calculate_gain of the activation")
    g.add_argument("--bias", type=finite, action=Given, default=None, metavar="B0",
                   help="after the strategy, fill every bias with this constant (transformers: norm biases too)")
    g.add_argument("--seed", type=seed, action=Given, default=0, help="seeds weights and inputs (default 0)")
    g.add_argument("--device", choices=("cpu", "cuda"), action=Given, default="cpu", help="default: cpu")
    g.add_argument("--batch", type=positive_int, action=Given, default=None,
                   help=f"batch size; default {MLP_BATCH} (mlp), {TRANSFORMER_BATCH} (transformers)")
    m = parser.add_argument_group("mlp (--model mlp)")
    m.add_argument("--width", type=positive_int, action=Given, default=DEPTH_MLP.width,
                   help=f"default {DEPTH_MLP.width}")
    m.add_argument("--depth", type=positive_int, action=Given, default=DEPTH_MLP.depth,
                   help=f"number of Linear layers, default {DEPTH_MLP.depth}")
    m.add_argument("--activation", choices=ACTIVATIONS, action=Given, default=DEPTH_MLP.activation,
                   help=f"default: {DEPTH_MLP.activation}")
    m.add_argument("--in-features", type=positive_int, action=Given, default=None,
                   help="input size; default: --width")
    t = parser.add_argument_group("transformer (--model transformer | torch_mha_transformer)")
    add_transformer_sizes(t, {**TRANSFORMER, "ffn": "relu"}, (*TRANSFORMER_SIZES, "seq-len"))
    t.add_argument("--norm", choices=NORMS, action=Given, default="layernorm", help="default: layernorm")
    t.add_argument("--norm-position", choices=NORM_POSITIONS, action=Given, default="pre", help="default: pre")
    t.add_argument("--causal", action=GivenFlag, help="causal attention mask")
    u = parser.add_argument_group("a model of yours (--model package.module:factory returning only the model)")
    u.add_argument("--input-shape", type=shape, action=Given, default=None, metavar="B,...",
                   help="the inputs' shape, batch first: float inputs x ~ N(0, 1), e.g. 8,3,32,32; with --vocab, "
                        "token ids, e.g. 8,32")
    u.add_argument("--vocab", type=positive_int, action=Given, default=None, metavar="N",
                   help="with --input-shape: integer token ids uniform in [0, N)")


TRANSFORMER_SIZES = ("vocab-size", "d-model", "n-heads", "d-ff", "n-layers")
_SIZE_HELP = {"vocab-size": "vocabulary", "d-model": "width", "n-heads": "heads", "d-ff": "feed-forward width",
              "n-layers": "blocks", "seq-len": "tokens per sequence"}


def add_transformer_sizes(group, defaults: dict, options: tuple[str, ...] = TRANSFORMER_SIZES) -> None:
    """initcore's transformer's size options (positive integers) and ``--ffn``, on ``group``, with their
    defaults (``defaults``: ``d_model``, ..., ``ffn``), as ``trace``, ``report`` and ``shards`` take them."""
    for option in options:
        default = defaults[option.replace("-", "_")]
        group.add_argument(f"--{option}", type=positive_int, action=Given, default=default,
                           help=f"{_SIZE_HELP[option]} (default {default})")
    group.add_argument("--ffn", choices=FFNS, action=Given, default=defaults["ffn"],
                       help=f"feed-forward (default {defaults['ffn']})")


def strategy_of(args: argparse.Namespace) -> str | None:
    """``--init``, else the built-in models' default; None for a model of the user's that keeps its own."""
    return args.init or (None if model_kind(args) == "user" else DEFAULT_INIT)


def add_probe_options(parser: argparse.ArgumentParser, what: str = "trace") -> None:
    """How the model is traced: ``--loss`` and ``--select`` (``trace``, ``diagnose``)."""
    from initcore import probe

    p = parser.add_argument_group("tracing")
    p.add_argument("--loss", choices=probe.LOSSES, default=None,
                   help="mean (the notebook's), square, or random (a fixed random projection); default: mean "
                        "for an mlp, random for the rest, whose final norm may leave mean and square flat")
    p.add_argument("--select", type=selection, default=None, metavar="WHICH",
                   help=f"which modules {what} rows are: {', '.join(probe.SELECTIONS)}, or module name patterns "
                        "separated by commas (fnmatch: 'blocks.*.attn'); default: what the model declares, else "
                        "every module owning parameters and every activation")


def selection(text: str) -> str | list[str]:
    """``--select``: a selection's name, one name pattern, or several separated by commas."""
    patterns = [p for p in text.replace(" ", "").split(",") if p]
    if not patterns:
        raise argparse.ArgumentTypeError(f"must be a selection or module name patterns, got {text!r}")
    return patterns[0] if len(patterns) == 1 else patterns


def trace_model(args: argparse.Namespace, model: torch.nn.Module, inputs) -> tuple[pd.DataFrame, str]:
    """``initcore.probe.trace`` of ``model`` as ``--loss`` and ``--select`` say; the frame and the loss used."""
    from initcore import probe

    loss = default_loss(args)
    check_select(args, model)
    with user_model_errors(args, model):
        return probe.trace(model, inputs, loss=loss, select=args.select), loss


@contextlib.contextmanager
def user_model_errors(args: argparse.Namespace, model: torch.nn.Module | None = None) -> Iterator[None]:
    """A model of the user's that raises on its inputs (a shape that does not fit, a dtype it does not take,
    an ``assert`` in its forward) is bad input: one line naming --model and where the inputs came from, as
    a ValueError, with a hint where the inputs are the likely cause (``model``: to see an Embedding first).
    initcore's own models are built for their inputs, and an exception raised in initcore's own code (its
    innermost frame there) is a bug of initcore's: both stay errors."""
    if model_kind(args) != "user":
        yield
        return
    try:
        yield
    except Exception as e:
        if _raised_in_initcore(e):
            raise
        raise ValueError(f"--model {args.model} failed on {_inputs_source(args)}: {_factory.one_line(e)}"
                         f"{_inputs_hint(args, model, e)}") from None


# initcore's torch function modes (the SDPA watch) pass every torch call of a model through these: an
# error there is the call's, made by the model's code one frame up.
_PASS_THROUGH = ("__torch_function__", "__torch_dispatch__")


def _raised_in_initcore(e: BaseException) -> bool:
    """Whether ``e`` was raised in initcore's own code: its innermost frame, pass-throughs aside, is there."""
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    while len(frames) > 1 and frames[-1].co_name in _PASS_THROUGH:
        frames.pop()
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # initcore/
    return bool(frames) and os.path.abspath(frames[-1].co_filename).startswith(package + os.sep)


def _inputs_source(args: argparse.Namespace) -> str:
    if args.input_shape is None:
        return "the inputs its factory returned"
    shape_text = ",".join(map(str, args.input_shape))
    return f"--input-shape {shape_text} --vocab {args.vocab}" if args.vocab else f"--input-shape {shape_text}"


def _first_layer(model: torch.nn.Module | None) -> tuple[str, torch.nn.Module] | None:
    """The first module (in registration order) that owns parameters itself, as a guess at the input layer."""
    if model is None:
        return None
    return next(((n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))), None)


def _inputs_hint(args: argparse.Namespace, model: torch.nn.Module | None, e: BaseException) -> str:
    """Where ``--input-shape`` made the inputs: what to give instead, when the failure points at them."""
    if args.input_shape is None:
        return ""
    if not args.vocab:
        first = _first_layer(model)
        if first is not None and isinstance(first[1], (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            return (f"; its first layer, {first[0] or type(first[1]).__name__}, is an {type(first[1]).__name__}, "
                    f"which takes token ids: add --vocab N (ids uniform in [0, N), N <= {first[1].num_embeddings})")
        message = _factory.one_line(e)
        if "'indices'" in message and "Long" in message:  # torch's embedding on float inputs, wherever it sits
            return "; the model takes integer inputs (token ids): add --vocab N (ids uniform in [0, N))"
        return ""
    if len(args.input_shape) == 1:
        return (f"; token ids are (batch, sequence): give two sizes, e.g. --input-shape {args.input_shape[0]},16 "
                f"--vocab {args.vocab}")
    return ""


def check_select(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Raise ValueError, naming ``--select``, unless it matches some module of ``model``."""
    from initcore import probe

    if args.select is not None:
        try:
            probe.points(model, args.select)
        except ValueError as e:
            raise ValueError(f"--select {args.select if isinstance(args.select, str) else ','.join(args.select)}: "
                             f"{e}") from None


def model_kind(args: argparse.Namespace) -> str:
    """"mlp", "transformer" (either built-in one) or "user" (``package.module:factory``)."""
    if _factory.is_reference(args.model):
        return "user"
    return "mlp" if args.model == "mlp" else "transformer"


def check_model_options(args: argparse.Namespace) -> None:
    """Raise ValueError if an option the user typed does not apply to the chosen model."""
    kind = model_kind(args)
    foreign = [o for o in sorted(given(args)) if any(o in opts for opts in _SPECIFIC.values())
               and o not in _SPECIFIC[kind]]
    if not foreign:
        if kind == "user" and "--vocab" in given(args) and "--input-shape" not in given(args):
            raise ValueError("--vocab needs --input-shape (the token ids' shape, batch first, e.g. 8,32)")
        return
    option = foreign[0]
    owners = tuple(k for k, opts in _SPECIFIC.items() if option in opts)
    owner = {("mlp",): "an mlp", ("transformer",): "the built-in transformers", ("user",): "a model of yours",
             ("mlp", "transformer"): "the built-in models"}[owners]
    mine = {"mlp": "an mlp's options: " + ", ".join(MLP_OPTIONS),
            "transformer": "a transformer's options: " + ", ".join(TRANSFORMER_OPTIONS),
            "user": "a model of yours takes its inputs from the factory or from --input-shape (batch first) "
                    "and --vocab"}[kind]
    raise ValueError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to --model "
                     f"{args.model} ({option} is for {owner}); {mine}")


# --- sizes against memory, before anything is allocated -----------------------------------------------


def _available(device: str) -> tuple[int | None, str]:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0], "free CUDA memory"
    return _memory.available_bytes(), "memory"


def check_memory(args: argparse.Namespace) -> None:
    """Raise ValueError (one line: the estimate, what is available, the largest sizes that fit) unless the
    built-in model of ``args`` and one traced pass fit in the memory available now."""
    kind = model_kind(args)
    available, where = _available(args.device)
    typed = given(args)
    if kind == "mlp":
        sizes = {"--in-features": args.in_features or args.width, "--width": args.width, "--depth": args.depth,
                 "--batch": args.batch or MLP_BATCH}

        def estimate(in_features, width, depth, batch):  # --in-features follows --width unless given
            return _memory.mlp_estimate(in_features if "--in-features" in typed else width, width, depth, batch)

        what = f"an mlp {sizes['--in-features']}->{args.width} x{args.depth} at batch {sizes['--batch']}"
    else:
        sizes = {"--vocab-size": args.vocab_size, "--d-model": args.d_model, "--d-ff": args.d_ff,
                 "--n-layers": args.n_layers, "--seq-len": args.seq_len, "--batch": args.batch or TRANSFORMER_BATCH}

        def estimate(vocab_size, d_model, d_ff, n_layers, seq_len, batch):
            return _memory.transformer_estimate(vocab_size, d_model, args.n_heads, d_ff, n_layers, batch, seq_len,
                                                norm=args.norm, ffn=args.ffn)

        what = f"a {args.model} ({args.n_layers} blocks, d_model {args.d_model}, seq {args.seq_len}, batch " \
               f"{sizes['--batch']})"
    blame = [o for o in sizes if o in typed] or list(sizes)
    multiples = {"--d-model": args.n_heads} if kind == "transformer" else {}
    _memory.check_fits(what, sizes, estimate, blame, available, where, multiples)
    if args.device == "cuda":  # weights are drawn on the host first
        host = _memory.available_bytes()
        _memory.check_fits(what + " (its weights, drawn on the host)", sizes,
                           lambda **kw: _memory.Estimate(estimate(**kw).weights, 0, 0), blame, host, "host memory",
                           multiples)


# --- building ------------------------------------------------------------------------------------------


def _to(inputs, device: str):
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(x, device) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    return inputs


def _fill_biases(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in param_roles(model):
            if p.role == "bias":
                p.param.fill_(value)


def check_input_memory(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Raise ValueError unless the inputs of ``--input-shape`` and the model's gradients fit in the memory
    available (its weights are there already; its activations are unknown until it runs)."""
    available, where = _available(args.device)
    if available is None:
        return
    numel = math.prod(args.input_shape)
    element = 8 if args.vocab else 4  # int64 token ids, float32 values
    grads = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    if element * numel + grads > available:
        raise ValueError(f"--input-shape {','.join(map(str, args.input_shape))}: {numel} inputs of {element} bytes "
                         f"and the model's gradients ({_memory.size(grads)}) would need about "
                         f"{_memory.size(element * numel + grads)}, more than the {_memory.size(available)} of "
                         f"{where} available; give a smaller shape (batch first)")


def _user_model(args: argparse.Namespace, gen: torch.Generator) -> tuple[torch.nn.Module, object]:
    built = _factory.build(args.model, args.seed)
    model, inputs = built
    both = sorted(given(args) & {"--input-shape", "--vocab"})
    if inputs is not None and both:
        raise ValueError(f"{', '.join(both)}: the factory of --model {args.model} returned its own inputs; give "
                         "one or the other, not both")
    if inputs is None:
        if args.input_shape is None:
            raise ValueError(f"--model {args.model} returned a model without inputs: give --input-shape (batch "
                             "first; with --vocab N for token ids), or return (model, inputs) from the factory")
        check_input_memory(args, model)
        inputs = (torch.randint(0, args.vocab, args.input_shape, generator=gen) if args.vocab
                  else torch.randn(args.input_shape, generator=gen))
    if args.init is not None:
        try:
            init.apply(model, args.init, gain=args.gain, generator=gen,
                       roles=parse_roles(getattr(args, "roles", None)))
        except ValueError as e:  # its advice about roles= said as --roles
            raise ValueError(cli_words(str(e))) from None
    else:
        typed = [o for o in ("--gain", "--roles") if getattr(args, o[2:], None) is not None]
        if typed:
            raise ValueError(f"{' and '.join(typed)} {'needs' if len(typed) == 1 else 'need'} --init: --model "
                             f"{args.model} keeps its factory's init unless --init is given")
    if args.bias is not None:
        _fill_biases(model, args.bias)
    return model, inputs


def build_model_and_inputs(args: argparse.Namespace) -> tuple[torch.nn.Module, object]:
    """The model of ``args`` initialized by ``args.init``, and its inputs, both on ``args.device``.

    The options are checked first (the ones typed must apply to the model; the sizes must fit in the memory
    available), so that bad input costs no allocation. As ``initcore.experiments`` builds its runs (an
    MLP through ``MLPRun.build``, so a trace here matches bench's for the same configuration and seed):
    weights, then inputs, drawn on the CPU from one ``torch.Generator`` seeded with ``args.seed``, then
    moved, so every device starts from the same numbers. A model of the user's comes from its factory
    (see ``initcore.cli._factory``), its inputs from the factory or from ``--input-shape``.

    Raises:
        ValueError: an option that does not apply, sizes that do not fit, a bad ``--model`` reference, or
            anything the library rejects (sizes, gain, device).
    """
    check_model_options(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    gen = torch.Generator().manual_seed(args.seed)
    kind = model_kind(args)
    if kind == "user":
        model, inputs = _user_model(args, gen)
        return model.to(args.device), _to(inputs, args.device)
    strategy_name = strategy_of(args)
    if kind == "mlp":
        config = MLPConfig(args.in_features or args.width, args.width, args.depth, args.activation)
        check_memory(args)  # after the configuration's own checks, before any allocation
        run = MLPRun(config, strategy_name, batch=args.batch or MLP_BATCH, gain=args.gain, bias=args.bias)
        model, inputs = run.build(gen)
    else:  # TransformerRun.build, plus --gain and --bias, which it does not take
        cls = Transformer if args.model == "transformer" else TorchMHATransformer
        TransformerConfig(args.vocab_size, args.d_model, args.n_heads, args.d_ff, args.n_layers, args.norm,
                          args.norm_position, args.ffn, causal=args.causal)  # its checks, allocating nothing
        check_memory(args)
        model = cls(args.vocab_size, args.d_model, args.n_heads, args.d_ff, args.n_layers, args.norm,
                    args.norm_position, args.ffn, causal=args.causal)
        init.apply(model, strategy_name, gain=args.gain, generator=gen)
        if args.bias is not None:
            _fill_biases(model, args.bias)
        inputs = torch.randint(0, args.vocab_size, (args.batch or TRANSFORMER_BATCH, args.seq_len), generator=gen)
    return model.to(args.device), inputs.to(args.device)


# --- describing and printing -----------------------------------------------------------------------------


def _shape_of(inputs) -> str:
    if isinstance(inputs, torch.Tensor):
        kind = "token ids" if not inputs.is_floating_point() else "inputs"
        return f"{kind} {'x'.join(map(str, inputs.shape))}"
    if isinstance(inputs, dict):
        return "inputs " + ", ".join(f"{k}={_shape_of(v).split(' ')[-1]}" for k, v in inputs.items())
    if isinstance(inputs, (tuple, list)):
        return "inputs (" + ", ".join(_shape_of(v).split(" ")[-1] for v in inputs) + ")"
    return f"inputs {type(inputs).__name__}"


def describe(args: argparse.Namespace, model: torch.nn.Module | None = None, inputs=None) -> str:
    """One line naming the model, init, seed and device of ``args`` (the first line of a table)."""
    kind = model_kind(args)
    if kind == "mlp":
        size = f"mlp {args.in_features or args.width}->{args.width} x{args.depth} {args.activation}"
    elif kind == "transformer":
        size = (f"{args.model} d_model {args.d_model}, {args.n_heads} heads, d_ff {args.d_ff}, "
                f"{args.n_layers} layers, seq {args.seq_len}, {args.norm_position}-{args.norm}, {args.ffn}"
                + (", causal" if args.causal else ""))
    else:
        size = args.model
        if model is not None:
            n = sum(p.numel() for p in model.parameters())
            size += f" ({type(model).__name__}, {n} parameters, {_shape_of(inputs)})"
    strategy_name = strategy_of(args) or "the factory's own"
    if getattr(args, "roles", None):
        strategy_name += f" (--roles {_roles.describe_roles(parse_roles(args.roles))})"
    gain_text = "" if args.gain is None else f" gain {args.gain}"
    bias = "" if args.bias is None else f", bias {args.bias}"
    return f"{size}, init {strategy_name}{gain_text}{bias}, seed {args.seed}, {args.device}"


def default_loss(args: argparse.Namespace) -> str:
    """``--loss``, else mean for an MLP (the notebook's) and random for the rest: a transformer's final
    norm leaves mean and square flat, and a model of the user's may end in one."""
    return args.loss or ("mean" if model_kind(args) == "mlp" else "random")


def comment(text: str, width: int = LINE_WIDTH) -> str:
    """``text`` as ``# `` lines within ``width`` columns."""
    return "\n".join(textwrap.wrap(text, width=width, initial_indent="# ", subsequent_indent="#   ")) + "\n"


def format_table(frame: pd.DataFrame, width: int = LINE_WIDTH) -> str:
    """``frame`` as text within ``width`` columns: columns that are all NaN left out (an MLP has no attention
    statistics), the rest in blocks of as many as fit, each block led by the first (id) column."""
    shown = frame.dropna(axis=1, how="all")
    if shown.empty or shown.shape[1] == 1:
        return shown.to_string(index=False) + "\n"

    def render(columns: list[str]) -> str:
        return shown[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}")

    first, rest = shown.columns[0], list(shown.columns[1:])
    blocks, current = [], []
    for column in rest:
        if current and max(map(len, render([first, *current, column]).splitlines())) > width:
            blocks.append(render([first, *current]))
            current = []
        current.append(column)
    blocks.append(render([first, *current]))
    return "\n\n".join(blocks) + "\n"


def print_frame(frame: pd.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", double_precision=10) + "\n")
    else:
        sys.stdout.write(format_table(frame))
