"""``initcore shards``: initialize the transformer sharded over N ranks (FSDP2 or tensor parallel) and check
that each parameter is the one-process init of the same seed, drawn from the strategy's distribution,
with independent shards and nothing left uninitialized (the work is ``initcore.distributed``'s)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from initcore.cli._common import integer_in, positive_int, strategy
from initcore.distributed import EMBEDDINGS, PARALLELS, NaiveRecipe, RankFailure, TransformerRecipe, check
from initcore.distributed.launch import BACKENDS
from initcore.experiments import SMALL_TRANSFORMER
from initcore.models import TransformerConfig
from initcore.models.transformer import ATTENTIONS, FFNS

MAX_WORLD_SIZE = 64  # ranks are processes on this machine (gloo) or one GPU each (nccl)
LINE_WIDTH = 120


def world_size(text: str) -> int:
    return integer_in(text, 1, MAX_WORLD_SIZE)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "shards", help="check a sharded init (FSDP2, tensor parallel) against the one-process init",
        description="Build the transformer on the meta device on N ranks, shard it, materialize it (poisoned "
                    "with NaN) and initialize it with init.apply; print one row per parameter (role, shape, "
                    "shard layout, std against the strategy's declared std, KS p-value, whether its shards are "
                    "independent and whether it is bit-identical to the one-process init of the same seed). "
                    "Exit 1 when a check fails. --naive runs the recipe the checks exist to catch.")
    p.add_argument("--strategy", type=strategy, default="standard", help="init strategy (default standard)")
    p.add_argument("--parallel", choices=tuple(PARALLELS), default="fsdp",
                   help="fsdp: FSDP2 fully_shard; tp: q, k, v, mlp_in column-wise, attn_out, mlp_out row-wise")
    p.add_argument("--world-size", type=world_size, default=2, help=f"ranks, 1..{MAX_WORLD_SIZE} (default 2)")
    p.add_argument("--embedding", choices=EMBEDDINGS, default="sharded", help="shard or replicate the embedding")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="gloo", help="gloo (CPU) or nccl (a GPU per rank)")
    p.add_argument("--seed", type=int, default=0, help="every rank's generator seed (default 0)")
    p.add_argument("--naive", action="store_true",
                   help="the naive recipe instead: nn.init on the shards after seeding every rank alike")
    cfg = SMALL_TRANSFORMER
    p.add_argument("--n-layers", type=positive_int, default=cfg.n_layers, help=f"blocks (default {cfg.n_layers})")
    p.add_argument("--d-model", type=positive_int, default=cfg.d_model, help=f"width (default {cfg.d_model})")
    p.add_argument("--n-heads", type=positive_int, default=cfg.n_heads, help=f"heads (default {cfg.n_heads})")
    p.add_argument("--d-ff", type=positive_int, default=cfg.d_ff, help=f"feed-forward width (default {cfg.d_ff})")
    p.add_argument("--vocab-size", type=positive_int, default=cfg.vocab_size,
                   help=f"vocabulary (default {cfg.vocab_size})")
    p.add_argument("--ffn", choices=FFNS, default=cfg.ffn, help=f"feed-forward (default {cfg.ffn})")
    p.add_argument("--attention", choices=ATTENTIONS, default=cfg.attention,
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
    """The report's rows as left-aligned text, one row per parameter, within LINE_WIDTH columns."""
    columns = {
        "parameter": report_table["name"], "role": report_table["role"], "shape": report_table["shape"],
        "layout": report_table["layout"].map(_layout),
        "std": report_table["std"].map(lambda v: f"{v:.4g}"),
        "target": report_table["target_std"].map(lambda v: f"{v:.4g}"),
        "KS p": report_table["ks_p"].map(lambda v: "-" if v != v else f"{v:.2g}"),
        "independent": report_table["independent"].map(_mark),
        "identical": report_table["identical"].map(_mark),
        "initialized": report_table["initialized"].map(_mark),
    }
    cells = {name: [name, *map(str, values)] for name, values in columns.items()}
    widths = {name: max(map(len, column)) for name, column in cells.items()}
    lines = [" ".join(cells[name][i].ljust(widths[name]) for name in cells).rstrip()
             for i in range(len(report_table) + 1)]
    return "\n".join(line[:LINE_WIDTH] for line in lines) + "\n"


def run(args: argparse.Namespace) -> int:
    cfg = TransformerConfig(vocab_size=args.vocab_size, d_model=args.d_model, n_heads=args.n_heads, d_ff=args.d_ff,
                            n_layers=args.n_layers, ffn=args.ffn, attention=args.attention)  # ValueError: exit 2
    kind = NaiveRecipe if args.naive else TransformerRecipe
    options = {} if args.naive else {"strategy": args.strategy}
    if args.naive and args.strategy != "standard":
        raise ValueError("--naive writes the 'standard' strategy the way trainers do; leave --strategy out")
    recipe = kind(cfg, parallel=args.parallel, embedding=args.embedding, **options)
    try:
        report = check(recipe, (args.world_size,), seed=args.seed, backend=args.backend)
    except RankFailure as e:
        sys.stderr.write(f"initcore: {e}\n")
        return 1
    c = recipe.config
    print(f"# {report.recipe}: transformer L{c.n_layers} d{c.d_model} h{c.n_heads} ff{c.d_ff} {c.ffn} "
          f"vocab {c.vocab_size}; world size {args.world_size} ({args.backend}), seed {args.seed}")
    print("# target: the std the strategy declares (init.promise), else that of one process at seed + 1;")
    print("# KS p: each matrix against that distribution; identical: bit for bit to the one-process init")
    sys.stdout.write(table(report.table))
    for note in report.notes:
        print(f"# note: {note}")
    if report.failures:
        print(f"# {len(report.failures)} check(s) failed:")
        for failure in report.failures:
            print(f"#   {failure}")
        return 1
    print(f"# every check passes: {len(report.table)} parameters")
    return 0
