"""``initcore shards``: initialize a model sharded over N ranks (FSDP2, HSDP or tensor parallel) and check
that each parameter is the one-process init of the same seed, drawn from the strategy's distribution, with
independent shards, agreeing replicas and nothing left uninitialized (the work is ``initcore.distributed``'s).

Three sources of the sharded model: initcore's transformer (``--strategy``, ``--parallel``, its sizes); a
model of yours (``--model package.module:factory --init STRATEGY|package.module:function``, sharded with
FSDP2 or HSDP over its repeated blocks: ``initcore.distributed.FactoryRecipe``); or your own recipe
(``--recipe package.module:recipe``, ``recipe(mesh, generator) -> model``, as your trainer builds, shards
and initializes it). ``--placements`` (or a second ``--recipe``) also requires the same full tensors
under another cut of the same model.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from initcore.cli import _factory
from initcore.cli._common import Given, GivenFlag, add_transformer_sizes, given, integer_in, strategy
from initcore.cli._roles import add_roles_option, cli_words
from initcore.distributed import (
    EMBEDDINGS,
    PARALLELS,
    FactoryRecipe,
    NaiveRecipe,
    RankFailure,
    TransformerRecipe,
    check,
)
from initcore.distributed.launch import BACKENDS
from initcore.experiments import SMALL_TRANSFORMER
from initcore.models import TransformerConfig
from initcore.models.transformer import ATTENTIONS

MAX_WORLD_SIZE = 64  # ranks are processes on this machine (gloo) or one GPU each (nccl)
LINE_WIDTH = 120
TRANSFORMER_OPTIONS = ("--strategy", "--embedding", "--naive", "--n-layers", "--d-model", "--n-heads", "--d-ff",
                       "--vocab-size", "--ffn", "--attention")
RECIPE_WORLD_SIZES = (1, 2)  # a recipe of yours: world size 1 stands in for one process


def world_size(text: str) -> int:
    return integer_in(text, 1, MAX_WORLD_SIZE)


def world_sizes(text: str) -> tuple[int, ...]:
    """``2`` or ``1,2,4``: world sizes, each 1..MAX_WORLD_SIZE."""
    return tuple(sorted({world_size(part) for part in text.split(",")}))


def reference(text: str) -> str:
    """``package.module:attribute``, resolved once the options are read."""
    if not _factory.is_reference(text):
        raise argparse.ArgumentTypeError(f"must be package.module:name (a callable of yours), got {text!r}")
    return text


def init_choice(text: str) -> str:
    """``--init``: a strategy's name or ``package.module:function``."""
    return text if _factory.is_reference(text) else strategy(text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "shards", help="check a sharded init (FSDP2, HSDP, tensor parallel) against the one-process init",
        description="Build the model on the meta device on N ranks, shard it, materialize it (poisoned with NaN) "
                    "and initialize it; print one row per parameter (role, shape, shard layout, std against the "
                    "strategy's declared std, KS p-value, whether its shards are independent, its replicas agree, "
                    "it is bit-identical to the one-process init of the same seed and, with --placements, to the "
                    "same model sharded along dim 1). The model: initcore's transformer (default; --naive runs the "
                    "recipe the checks exist to catch), --model FACTORY --init INIT, or --recipe RECIPE.",
        epilog="Exit status: 0 when every check passes, 1 when one fails, 2 on bad input (a recipe or model of "
               "yours that raises included).")
    p.add_argument("--recipe", type=reference, action="append", default=None, metavar="MODULE:RECIPE",
                   help="a recipe of yours, recipe(mesh, generator) -> the sharded, initialized model, as your "
                        "trainer does it (mesh: the 1-D DeviceMesh over the ranks; build 2-D meshes from it; "
                        "generator: seeded alike on every rank). Repeat it to require the same full tensors from "
                        "another recipe of the same model (sharded another way). Default --world-size: 1,2")
    p.add_argument("--model", type=reference, default=None, metavar="MODULE:FACTORY",
                   help="a model of yours: factory(seed) or factory() -> nn.Module (or (nn.Module, inputs)), built "
                        "on the meta device, sharded with FSDP2 (or HSDP) over its repeated blocks and the root")
    p.add_argument("--init", type=init_choice, default=None, metavar="NAME|MODULE:FUNCTION",
                   help="with --model: a strategy (see `initcore list`), or init(model[, generator]) of yours, "
                        "called after to_empty (with one argument, after torch.manual_seed alike on every rank)")
    add_roles_option(p)
    p.add_argument("--strategy", type=strategy, action=Given, default="standard",
                   help="initcore's transformer: its init strategy (default standard)")
    p.add_argument("--parallel", choices=tuple(PARALLELS), default="fsdp",
                   help="fsdp: FSDP2 fully_shard; hsdp: FSDP2 on a 2-D mesh (2 replica groups); tp (initcore's "
                        "transformer): q, k, v, mlp_in column-wise, attn_out, mlp_out row-wise")
    p.add_argument("--placements", action="store_true",
                   help="fsdp, hsdp: also shard every matrix along dim 1 and require the same full tensors")
    p.add_argument("--world-size", type=world_sizes, default=None, metavar="N[,N...]",
                   help=f"ranks, 1..{MAX_WORLD_SIZE}; several: each, and the same model at every one (default 2, "
                        "or 1,2 for --recipe)")
    p.add_argument("--embedding", choices=EMBEDDINGS, action=Given, default="sharded",
                   help="shard or replicate the embedding")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="gloo", help="gloo (CPU) or nccl (a GPU per rank)")
    p.add_argument("--seed", type=int, default=0, help="every rank's generator seed (default 0)")
    p.add_argument("--naive", action=GivenFlag,
                   help="the naive recipe instead: nn.init on the shards after seeding every rank alike")
    cfg = SMALL_TRANSFORMER
    t = p.add_argument_group("initcore's transformer")
    add_transformer_sizes(t, {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers",
                                                           "ffn")})
    t.add_argument("--attention", choices=ATTENTIONS, action=Given, default=cfg.attention,
                   help=f"sdpa (separate q, k, v) or torch_mha (packed; fsdp only) (default {cfg.attention})")
    return p


def _layout(text: str) -> str:
    if text.startswith("local"):
        return "replicated"
    placements, _, ranks = text.partition(" over ")
    return f"{placements}x{ranks}"


def _mark(value) -> str:
    return "-" if value is None or value != value else ("yes" if value else "NO")


def table(report_table: pd.DataFrame) -> str:
    """The report's rows as left-aligned text, one row per parameter (and world size, where there are several),
    within LINE_WIDTH columns; ``replicas`` where some parameter has replicas to compare, ``placement`` where
    the report compared placements."""
    columns = {}
    if report_table["world_size"].nunique() > 1:
        columns["world"] = report_table["world_size"]
    columns.update({
        "parameter": report_table["name"], "role": report_table["role"], "shape": report_table["shape"],
        "layout": report_table["layout"].map(_layout),
        "std": report_table["std"].map(lambda v: f"{v:.4g}"),
        "target": report_table["target_std"].map(lambda v: f"{v:.4g}"),
        "KS p": report_table["ks_p"].map(lambda v: "-" if v != v else f"{v:.2g}"),
        "independent": report_table["independent"].map(_mark),
        "identical": report_table["identical"].map(_mark),
        "initialized": report_table["initialized"].map(_mark),
    })
    if report_table["layout"].str.contains("R").any() or not report_table["replicas"].all():
        columns["replicas"] = report_table["replicas"].map(_mark)
    if report_table["placement"].notna().any():
        columns["placement"] = report_table["placement"].map(_mark)
    cells = {name: [name, *map(str, values)] for name, values in columns.items()}
    widths = {name: max(map(len, column)) for name, column in cells.items()}
    lines = [" ".join(cells[name][i].ljust(widths[name]) for name in cells).rstrip()
             for i in range(len(report_table) + 1)]
    return "\n".join(line[:LINE_WIDTH] for line in lines) + "\n"


def _resolve(option: str, text: str):
    """The callable ``text`` names, or a ValueError naming ``option`` (the shared resolver speaks of --model)."""
    try:
        return _factory.resolve(text)
    except ValueError as e:
        message = str(e)
        raise ValueError(f"{option} {message.removeprefix('--model ')}" if option != "--model" else message) from None


def _refuse(args: argparse.Namespace, source: str, allowed: tuple[str, ...] = ()) -> None:
    """ValueError when options of initcore's transformer (or --init, --roles, --placements) come with another
    source of the model."""
    typed = sorted(o for o in given(args) if o in TRANSFORMER_OPTIONS and o not in allowed)
    typed += [o for o, on in (("--init", args.init is not None), ("--roles", args.roles is not None),
                              ("--placements", args.placements)) if on and o not in allowed]
    if typed:
        raise ValueError(f"{', '.join(typed)} {'does' if len(typed) == 1 else 'do'} not apply to {source}")


def _recipes(args: argparse.Namespace):
    """(recipe, variants, world sizes, heading) from the options; ValueError on a bad combination."""
    if args.recipe and args.model:
        raise ValueError("--recipe and --model: give one (a recipe builds its own model)")
    if args.recipe:
        _refuse(args, "--recipe (your recipe builds, shards and initializes the model itself)")
        recipes = [_resolve("--recipe", r) for r in args.recipe]
        variants = {f"--recipe {text}": r for text, r in zip(args.recipe[1:], recipes[1:], strict=True)}
        return recipes[0], variants, args.world_size or RECIPE_WORLD_SIZES, f"your recipe {args.recipe[0]}"
    sizes = args.world_size or (2,)
    if args.placements and args.parallel == "tp":
        raise ValueError("--placements shards along dim 1 with FSDP2 (--parallel fsdp or hsdp); tensor parallel's "
                         "placements are its plan's")
    if args.parallel == "hsdp" and any(w % 2 for w in sizes):
        raise ValueError(f"--parallel hsdp needs even world sizes (2 replica groups), got {','.join(map(str, sizes))}")
    if args.model:
        _refuse(args, "--model (a model of yours: give --init, and --roles for what its modules do not declare)",
                allowed=("--init", "--roles", "--placements"))
        if args.init is None:
            raise ValueError(f"--model {args.model} needs --init STRATEGY or --init package.module:function: after "
                             "to_empty nothing else initializes it")
        if args.parallel == "tp":
            raise ValueError("--parallel tp needs a plan for your model's layers: write a --recipe (see the README, "
                             "Sharded init); valid with --model: fsdp, hsdp")
        factory = _resolve("--model", args.model)
        init = _resolve("--init", args.init) if _factory.is_reference(args.init) else args.init
        if args.roles is not None and not isinstance(init, str):
            raise ValueError("--roles goes with --init STRATEGY; your init function knows its own parameters")
        recipe = FactoryRecipe(factory, init, args.parallel, roles=args.roles, seed=args.seed)
        variants = {"Shard(1)": FactoryRecipe(factory, init, args.parallel, shard_dim=1, roles=args.roles,
                                              seed=args.seed)} if args.placements else {}
        return recipe, variants, sizes, f"model {args.model}, init {args.init}"
    for option in ("--init", "--roles"):
        if getattr(args, option[2:]) is not None:
            raise ValueError(f"{option} goes with --model (initcore's transformer takes --strategy)")
    cfg = TransformerConfig(vocab_size=args.vocab_size, d_model=args.d_model, n_heads=args.n_heads, d_ff=args.d_ff,
                            n_layers=args.n_layers, ffn=args.ffn, attention=args.attention)  # ValueError: exit 2
    kind = NaiveRecipe if args.naive else TransformerRecipe
    options = {} if args.naive else {"strategy": args.strategy}
    if args.naive and "--strategy" in given(args):
        raise ValueError("--naive writes the 'standard' strategy the way trainers do; leave --strategy out")
    recipe = kind(cfg, parallel=args.parallel, embedding=args.embedding, **options)
    variants = {"Shard(1)": kind(cfg, parallel=args.parallel, embedding=args.embedding, shard_dim=1, **options)} \
        if args.placements else {}
    c = recipe.config
    heading = f"transformer L{c.n_layers} d{c.d_model} h{c.n_heads} ff{c.d_ff} {c.ffn} vocab {c.vocab_size}"
    return recipe, variants, sizes, heading


def _rank_failure(e: RankFailure) -> str:
    """One line for a rank that raised: which rank, and the exception's own last line."""
    text = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or ["a rank failed"]
    head = text[0].split(" while ", 1)[0]  # "rank 0 of 2 raised", "rank 1 of 2 died (exit code 1)"
    return f"{head}: {text[-1]}" if len(text) > 1 else head


def run(args: argparse.Namespace) -> int:
    recipe, variants, sizes, heading = _recipes(args)
    user = bool(args.recipe or args.model)
    try:
        report = check(recipe, sizes, seed=args.seed, backend=args.backend, variants=variants)
    except RankFailure as e:
        if user:  # your recipe, factory or init raised on a rank: bad input, one line
            source = f"--recipe {args.recipe[0]}" if args.recipe else f"--model {args.model} --init {args.init}"
            raise ValueError(f"{source}: {cli_words(_rank_failure(e))}") from None
        sys.stderr.write(f"initcore: {e}\n")
        return 1
    print(f"# {report.recipe}: {heading}; world size {','.join(map(str, sizes))} ({args.backend}), seed {args.seed}")
    print("# target: the std the strategy declares (init.promise), else that of one process at seed + 1;")
    print("# KS p: each matrix against that distribution; identical: bit for bit to the one-process init"
          + ("" if getattr(recipe, "reference", None) else f" (here: world size {sizes[0]})"))
    if variants:
        print(f"# placement: bit for bit to the same model under {', '.join(variants)}")
    sys.stdout.write(table(report.table))
    for note in report.notes:
        print(f"# note: {note}")
    if report.failures:
        print(f"# {len(report.failures)} check(s) failed:")
        for failure in report.failures:
            print(f"#   {failure}")
        return 1
    print(f"# every check passes: {report.table['name'].nunique()} parameters")
    return 0
