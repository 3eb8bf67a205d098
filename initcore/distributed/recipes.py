"""Recipes: how a model is built sharded and initialized on every rank, as a trainer does it.

A recipe is any callable ``recipe(mesh, generator) -> nn.Module`` that returns the sharded model,
initialized: typically build on the meta device, shard (FSDP2 ``fully_shard``, tensor parallel
``parallelize_module``), ``to_empty``, initialize. ``initcore.distributed.check`` runs it on N ranks
and checks what it gives; it must be importable by name (a module-level function, or an instance of a
module-level class), since the ranks unpickle it.

Two recipes for initcore's ``Transformer`` are here: ``TransformerRecipe``, initcore's own (``init.apply``
on the DTensors, see ``initcore.init.sharded``), and ``NaiveRecipe``, the common one that the checks
exist to catch: ``nn.init`` on the sharded parameters after seeding every rank alike, so every rank
draws the same numbers into its own shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from initcore import init
from initcore.init.strategies import config_for
from initcore.models import Transformer, TransformerConfig, param_roles

PARALLELS = {
    "fsdp": "FSDP2 fully_shard per block and at the root: every parameter Shard(0) over the ranks",
    "tp": "tensor parallel: q, k, v and mlp_in column-wise, attn_out and mlp_out row-wise, norms replicated",
}
EMBEDDINGS = ("sharded", "replicated")


def _choice(what: str, value: object, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def tp_plan(model: Transformer) -> dict[str, object]:
    """``parallelize_module`` plan of one block, by submodule path: column-wise into a branch, row-wise out."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, object] = {"attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
                               "attn.o": RowwiseParallel()}
    if model.config.ffn == "swiglu":
        plan.update({"ffn.w1": ColwiseParallel(), "ffn.w3": ColwiseParallel(), "ffn.w2": RowwiseParallel()})
    else:
        plan.update({"ffn.fc1": ColwiseParallel(), "ffn.fc2": RowwiseParallel()})
    return plan


def shard(model: Transformer, mesh, parallel: str, embedding: str = "sharded") -> Transformer:
    """Shard ``model`` (on any device, the meta device included) over the 1-D ``mesh``, in place.

    ``fsdp``: ``fully_shard`` on each block, then on the root (embedding and final norm); a replicated
    embedding and scalar parameters (ReZero's gates) are left out of sharding (``ignored_params``).
    ``tp``: the plan of ``tp_plan`` in every block, the embedding row-wise (vocabulary rows over the
    ranks) or replicated, norms replicated. This is the layout of the parameters, for init and its
    checks; a forward pass of the tensor-parallel model would also need the attention to reshape to
    its local width (``MultiHeadAttention`` takes the width from its input), so the probe traces the
    gathered model.
    """
    _choice("parallel", parallel, PARALLELS)
    _choice("embedding", embedding, EMBEDDINGS)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # FSDP2 shards no scalars (ReZero's gates): they stay replicated
            fully_shard(block, mesh=mesh, ignored_params={p for p in block.parameters() if p.dim() == 0} or None)
        ignored = {model.embed.weight} if embedding == "replicated" else None
        fully_shard(model, mesh=mesh, ignored_params=ignored)
        return model
    if model.config.attention != "sdpa":
        raise ValueError(f"tensor parallel shards separate q, k, v projections; attention "
                         f"{model.config.attention!r} packs them (valid for tp: sdpa)")
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import RowwiseParallel, parallelize_module

    for block in model.blocks:
        parallelize_module(block, mesh, tp_plan(model))
    if embedding == "sharded":
        parallelize_module(model, mesh, {"embed": RowwiseParallel(input_layouts=Replicate())})
    return model


def meta_transformer(config: TransformerConfig) -> Transformer:
    """The model on the meta device: its shapes and roles, no memory, nothing drawn."""
    with torch.device("meta"):
        return Transformer.from_config(config)


@dataclass(frozen=True)
class TransformerRecipe:
    """initcore's recipe: the Transformer built on the meta device, sharded, ``to_empty``, then ``init.apply``.

    ``config`` is adapted to what ``strategy`` needs (``config_for``: DeepNorm's alpha, ReZero's gates).
    ``reference(generator)`` is the one-process model the gathered one must equal, bit for bit.
    """

    config: TransformerConfig
    strategy: str
    parallel: str = "fsdp"
    embedding: str = "sharded"

    def __post_init__(self) -> None:
        init.get(self.strategy)  # unknown strategies fail here, in the caller, not on every rank
        _choice("parallel", self.parallel, PARALLELS)
        _choice("embedding", self.embedding, EMBEDDINGS)
        if self.parallel == "tp" and self.config.attention != "sdpa":
            raise ValueError(f"tensor parallel shards separate q, k, v projections; attention "
                             f"{self.config.attention!r} packs them (valid for tp: sdpa)")
        object.__setattr__(self, "config", config_for(self.strategy, self.config))

    @property
    def name(self) -> str:
        return f"initcore {self.strategy} ({self.parallel}, embedding {self.embedding})"

    def __call__(self, mesh, generator: torch.Generator) -> nn.Module:
        model = shard(meta_transformer(self.config), mesh, self.parallel, self.embedding)
        model.to_empty(device=mesh.device_type)
        init.apply(model, self.strategy, generator=generator)
        return model

    def reference(self, generator: torch.Generator) -> nn.Module:
        """The same strategy on one process, unsharded, drawn from ``generator`` (the same for every sharding)."""
        return init.apply(Transformer.from_config(self.config), self.strategy, generator=generator)

    def promise(self, role: str, fan_in: int, fan_out: int, block: int | None, part: str, chunks: int):
        """The distribution the strategy declares for one matrix of this model (``init.promise``): the
        checks' KS target."""
        c = self.config
        return init.promise(self.strategy, role, fan_in, fan_out, n_layers=c.n_layers, block=block,
                            d_model=c.d_model, d_ff=c.d_ff, part=part, chunks=chunks)

    def reference_key(self) -> tuple:
        """What ``reference`` depends on: recipes with equal keys share their one-process models."""
        return ("initcore.TransformerRecipe", self.config, self.strategy)


@dataclass(frozen=True)
class NaiveRecipe(TransformerRecipe):
    """The recipe the checks exist to catch (the issue's and the public trainers' recurring bug).

    Meta device, shard, ``to_empty``, then ``torch.manual_seed`` alike on every rank and ``nn.init`` on
    each sharded parameter: the "standard" strategy written the way a trainer writes it (Xavier uniform
    matrices, embedding N(0, 0.1²), zero biases, unit norms). On a DTensor over a CPU mesh the draw
    happens on each rank's local shard from the same seed: every shard holds the same numbers, and
    the full weight's std still looks right. ``reset_biases=False`` also leaves biases as ``to_empty``
    left them (the tensor-parallel script of the issue).
    """

    strategy: str = "standard"
    reset_biases: bool = True

    @property
    def name(self) -> str:
        left = "" if self.reset_biases else ", biases left"
        return f"naive nn.init ({self.parallel}, embedding {self.embedding}{left})"

    def __call__(self, mesh, generator: torch.Generator) -> nn.Module:
        model = shard(meta_transformer(self.config), mesh, self.parallel, self.embedding)
        model.to_empty(device=mesh.device_type)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # alike on every rank
        with torch.no_grad():
            for p in param_roles(model):
                if p.role == "embedding":
                    nn.init.normal_(p.param, 0.0, 0.1)
                elif p.role == "norm":
                    nn.init.ones_(p.param)
                elif p.role in ("bias", "gate"):
                    if self.reset_biases:
                        nn.init.zeros_(p.param)
                else:
                    nn.init.xavier_uniform_(p.param)
        return model
