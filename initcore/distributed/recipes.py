"""Recipes: how a model is built sharded and initialized on every rank, as a trainer does it.

A recipe is any callable ``recipe(mesh, generator) -> nn.Module`` that returns the sharded model,
initialized: typically build on the meta device, shard (FSDP2 ``fully_shard``, tensor parallel
``parallelize_module``), ``to_empty``, initialize. ``initcore.distributed.check`` runs it on N ranks
and checks what it gives; it must be importable by name (a module-level function, or an instance of a
module-level class), since the ranks unpickle it.

Two recipes for initcore's ``Transformer`` are here: ``TransformerRecipe``, initcore's own (``init.apply``
on the DTensors, see ``initcore.init.sharded``), and ``NaiveRecipe``, the common one that the checks
exist to catch: ``nn.init`` on the sharded parameters after seeding every rank alike, so every rank
draws the same numbers into its own shard. ``FactoryRecipe`` does the same for a model of yours: its
factory on the meta device, FSDP2 (or HSDP) over its repeated blocks and the root, ``to_empty``, then a
strategy or your own init function.

Layouts: ``fsdp`` shards every parameter along ``shard_dim`` (0, FSDP2's default, or 1 through its
``shard_placement_fn``: the same model must come out the same either way, pytorch/pytorch#168058);
``hsdp`` is FSDP2 on a 2-D mesh, ``REPLICAS`` groups that each hold the whole model sharded over the
rest of the ranks (the replicas must hold the same values, allenai/OLMo-core#319); ``tp`` is tensor
parallel (``tp_plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from initcore import init
from initcore.init.strategies import config_for
from initcore.models import Transformer, TransformerConfig, param_roles

PARALLELS = {
    "fsdp": "FSDP2 fully_shard per block and at the root: every parameter Shard(shard_dim) over the ranks",
    "hsdp": "HSDP: FSDP2 on a 2-D mesh, 2 replica groups, each sharding the model over half of the ranks",
    "tp": "tensor parallel: q, k, v and mlp_in column-wise, attn_out and mlp_out row-wise, norms replicated",
}
EMBEDDINGS = ("sharded", "replicated")
SHARD_DIMS = (0, 1)
REPLICAS = 2  # HSDP's replica groups: the fewest that can disagree


def hsdp_mesh(mesh):
    """The 2-D mesh (replicate, shard) of HSDP over the ranks of the 1-D ``mesh``: ``REPLICAS`` x world / REPLICAS."""
    from torch.distributed.device_mesh import init_device_mesh

    world = mesh.size()
    if world % REPLICAS:
        raise ValueError(f"hsdp needs a world size divisible by {REPLICAS} (its replica groups), got {world}")
    return init_device_mesh(mesh.device_type, (REPLICAS, world // REPLICAS), mesh_dim_names=("replicate", "shard"))


def fully_shard_model(model: nn.Module, mesh, shard_dim: int = 0, blocks=None, ignored=None) -> nn.Module:
    """FSDP2 as trainers apply it: ``fully_shard`` on each block, then on the root, every parameter sharded
    along ``shard_dim`` where it has that dimension (else dim 0); scalars (ReZero's gates) and ``ignored``
    left out. ``mesh`` 2-D (``hsdp_mesh``): HSDP. ``blocks``: default, ``initcore.models.structure.blocks``."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    from initcore.models.structure import blocks as repeated

    if shard_dim not in SHARD_DIMS:
        raise ValueError(f"unknown shard_dim {shard_dim!r}; valid: {', '.join(map(str, SHARD_DIMS))}")

    def placement(p: nn.Parameter):
        return Shard(shard_dim if p.dim() > shard_dim else 0)

    options = {"mesh": mesh, "shard_placement_fn": placement if shard_dim else None}
    for block in (m for _, m in repeated(model)) if blocks is None else blocks:
        scalars = {p for p in block.parameters() if p.dim() == 0}  # FSDP2 shards no scalars: they stay replicated
        fully_shard(block, ignored_params=scalars or None, **options)
    scalars = {p for p in model.parameters() if p.dim() == 0 and not _is_dtensor(p)}
    fully_shard(model, ignored_params=(scalars | set(ignored or ())) or None, **options)
    return model


def _is_dtensor(p) -> bool:
    from initcore.init.sharded import is_dtensor

    return is_dtensor(p)


def _choice(what: str, value: object, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


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


def shard(model: Transformer, mesh, parallel: str, embedding: str = "sharded", shard_dim: int = 0) -> Transformer:
    """Shard ``model`` (on any device, the meta device included) over the 1-D ``mesh``, in place.

    ``fsdp``: ``fully_shard`` on each block, then on the root (embedding and final norm), along
    ``shard_dim``; a replicated embedding and scalar parameters (ReZero's gates) are left out of sharding
    (``ignored_params``). ``hsdp``: the same on ``hsdp_mesh(mesh)``.
    ``tp``: the plan of ``tp_plan`` in every block, the embedding row-wise (vocabulary rows over the
    ranks) or replicated, norms replicated. This is the layout of the parameters, for init and its
    checks; a forward pass of the tensor-parallel model would also need the attention to reshape to
    its local width (``MultiHeadAttention`` takes the width from its input), so the probe traces the
    gathered model.
    """
    _choice("parallel", parallel, PARALLELS)
    _choice("embedding", embedding, EMBEDDINGS)
    if parallel in ("fsdp", "hsdp"):
        ignored = {model.embed.weight} if embedding == "replicated" else None
        return fully_shard_model(model, hsdp_mesh(mesh) if parallel == "hsdp" else mesh, shard_dim,
                                 blocks=list(model.blocks), ignored=ignored)
    if shard_dim:
        raise ValueError("shard_dim 1 is FSDP2's (fsdp, hsdp); tensor parallel's placements are its plan's")
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
    shard_dim: int = 0  # fsdp, hsdp: the dimension every matrix is sharded along

    def __post_init__(self) -> None:
        init.get(self.strategy)  # unknown strategies fail here, in the caller, not on every rank
        _choice("parallel", self.parallel, PARALLELS)
        _choice("embedding", self.embedding, EMBEDDINGS)
        _choice("shard_dim", self.shard_dim, SHARD_DIMS)
        if self.shard_dim and self.parallel == "tp":
            raise ValueError("shard_dim 1 is FSDP2's (fsdp, hsdp); tensor parallel's placements are its plan's")
        if self.parallel == "tp" and self.config.attention != "sdpa":
            raise ValueError(f"tensor parallel shards separate q, k, v projections; attention "
                             f"{self.config.attention!r} packs them (valid for tp: sdpa)")
        object.__setattr__(self, "config", config_for(self.strategy, self.config))

    @property
    def name(self) -> str:
        return f"initcore {self.strategy} ({self.layout}, embedding {self.embedding})"

    @property
    def layout(self) -> str:
        return self.parallel + (f", Shard({self.shard_dim})" if self.shard_dim else "")

    def __call__(self, mesh, generator: torch.Generator) -> nn.Module:
        model = shard(meta_transformer(self.config), mesh, self.parallel, self.embedding, self.shard_dim)
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
        return f"naive nn.init ({self.layout}, embedding {self.embedding}{left})"

    def __call__(self, mesh, generator: torch.Generator) -> nn.Module:
        model = shard(meta_transformer(self.config), mesh, self.parallel, self.embedding, self.shard_dim)
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


def _takes(fn, n: int) -> bool:
    """Whether ``fn`` accepts ``n`` positional arguments."""
    import inspect

    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): assume it does
        return True
    return True


def _factory_model(factory, seed: int) -> nn.Module:
    made = factory(seed) if _takes(factory, 1) else factory()
    model = made[0] if isinstance(made, tuple) and made and isinstance(made[0], nn.Module) else made
    if not isinstance(model, nn.Module):
        raise ValueError(f"{getattr(factory, '__qualname__', factory)} returned {type(made).__name__}; it must return "
                         "an nn.Module or (nn.Module, inputs)")
    return model


@dataclass(frozen=True)
class FactoryRecipe:
    """A model of yours under FSDP2 (or HSDP), initialized by a strategy or by your own function.

    On every rank: ``torch.manual_seed(seed)``, ``factory(seed)`` (or ``factory()``) on the meta device,
    ``fully_shard_model`` along ``shard_dim``, ``to_empty``, then ``init``: a strategy's name
    (``init.apply`` with the recipe's generator and ``roles``: every rank draws the full tensor and keeps its
    shard) or a function of yours, called as ``init(model, generator)`` if it takes two arguments, else as
    ``init(model)`` after ``torch.manual_seed`` with a seed drawn from the generator (alike on every rank, as
    a trainer seeds). ``reference`` is the same model and init on one process, unsharded: what the gathered
    model must equal, bit for bit. ``factory`` and ``init`` must be importable by name (module-level).
    """

    factory: object  # factory(seed) or factory() -> nn.Module or (nn.Module, inputs)
    init: object  # a strategy's name, or init(model[, generator])
    parallel: str = "fsdp"
    shard_dim: int = 0
    roles: object = None  # a strategy's roles=, for parameters no module declares
    seed: int = 0  # the factory's

    def __post_init__(self) -> None:
        if isinstance(self.init, str):
            init.get(self.init)
        elif not callable(self.init):
            raise ValueError(f"init must be a strategy's name or a function init(model[, generator]), got "
                             f"{type(self.init).__name__}")
        _choice("parallel", self.parallel, ("fsdp", "hsdp"))  # tensor parallel needs a plan: write a recipe
        _choice("shard_dim", self.shard_dim, SHARD_DIMS)

    @property
    def name(self) -> str:
        what = self.init if isinstance(self.init, str) else _qualname(self.init)
        dims = f", Shard({self.shard_dim})" if self.shard_dim else ""
        return f"{_qualname(self.factory)}, init {what} ({self.parallel}{dims})"

    def _model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return _factory_model(self.factory, self.seed)

    def _init(self, model: nn.Module, generator: torch.Generator) -> nn.Module:
        if isinstance(self.init, str):
            return init.apply(model, self.init, generator=generator, roles=self.roles)
        if _takes(self.init, 2):
            self.init(model, generator)
        else:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # alike on every rank
            self.init(model)
        return model

    def __call__(self, mesh, generator: torch.Generator) -> nn.Module:
        with torch.device("meta"):
            model = self._model()
        shard_mesh = hsdp_mesh(mesh) if self.parallel == "hsdp" else mesh
        fully_shard_model(model, shard_mesh, self.shard_dim)
        model.to_empty(device=mesh.device_type)
        with torch.no_grad():
            return self._init(model, generator)

    def reference(self, generator: torch.Generator) -> nn.Module:
        """The same model and init on one process, unsharded."""
        with torch.no_grad():
            return self._init(self._model(), generator)

    def promise(self, role: str, fan_in: int, fan_out: int, block: int | None, part: str, chunks: int):
        """The distribution a strategy declares for one matrix (``init.promise``; depth: the model's repeated
        blocks), the checks' KS target; a ValueError (no target: a two-sample test instead) for a function."""
        if not isinstance(self.init, str):
            raise ValueError("a function of yours declares no distribution")
        from initcore.models.structure import blocks

        with torch.device("meta"):
            depth = len(blocks(self._model())) or 1
        return init.promise(self.init, role, fan_in, fan_out, n_layers=depth, block=block, part=part, chunks=chunks)


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
