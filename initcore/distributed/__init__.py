"""Sharded init on torch.distributed: run an init recipe on N ranks, gather the model, check it.

``check(recipe, world_sizes=(1, 2, 4))`` runs ``recipe(mesh, generator)`` (build the sharded model
and initialize it, the way a trainer does) on each world size, gathers the full parameters, and
checks that they come from the strategy's distribution, that shards are independent, that nothing
was left uninitialized, and that the model is the one-process model of the same seed at every world
size. Ranks are processes started once per world size and reused (``group``); gloo on the CPU, nccl on
CUDA.

    >>> from initcore.distributed import TransformerRecipe, check          # doctest: +SKIP
    >>> report = check(TransformerRecipe(SMALL_TRANSFORMER, "gpt2", "tp"))  # doctest: +SKIP
    >>> report.ok, report.failures                                          # doctest: +SKIP
"""

from initcore.distributed.checks import (
    CHECKS,
    WORLD_SIZES,
    Independence,
    ShardReport,
    check,
    correlation_bound,
    gathered_model,
    independence,
    ks_2samp,
)
from initcore.distributed.gather import RankResult, assemble, run_recipe
from initcore.distributed.launch import RankFailure, RankGroup, close_all, group, world_mesh
from initcore.distributed.recipes import (
    EMBEDDINGS,
    PARALLELS,
    FactoryRecipe,
    NaiveRecipe,
    TransformerRecipe,
    fully_shard_model,
    shard,
)

__all__ = [
    "CHECKS", "EMBEDDINGS", "PARALLELS", "WORLD_SIZES", "FactoryRecipe", "Independence", "NaiveRecipe", "RankFailure",
    "RankGroup", "RankResult", "ShardReport", "TransformerRecipe", "assemble", "check", "close_all",
    "correlation_bound", "fully_shard_model", "gathered_model", "group", "independence", "ks_2samp", "run_recipe",
    "shard", "world_mesh",
]
