"""Init of sharded parameters (DTensors: FSDP2 ``fully_shard``, tensor parallel): the model one process gives.

Every rank draws each *full* parameter with the same generator sequence one process uses, then keeps
the slice its DTensor owns. The gathered model is then bit-identical to the one-process model of the
same seed at every world size and sharding, fans come from the full shape, and no two ranks can hold
the same numbers where one process would not. The price is compute, not memory: each rank draws every
parameter in full (world_size times the draws of one process in total), and holds one full parameter
at a time beside its shards, freed before the next is made: memory per rank is its shards plus the
largest parameter (the largest module's direct parameters for ``torch_default``).

``initcore.init.apply`` routes every parameter through ``full_params``, and the ``torch_default``
strategy every module through ``full_modules``; plain tensors pass through untouched.

Pass ``apply`` a ``generator`` seeded alike on every rank (or seed torch alike on every rank): the
ranks then draw the same full parameters, which is what makes the slices fit together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from initcore.models.roles import RoledParam


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (an ``nn.Parameter`` wrapping one included).

    Read from ``sys.modules`` rather than imported: importing torch.distributed.tensor costs ~3 s, which
    every user of ``initcore.init`` would pay, and no DTensor exists before that module is imported.
    """
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    return dtensor is not None and isinstance(t, dtensor)


def full_like(param: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A full-size stand-in for the DTensor ``param``, filled with NaN so a part no rule fills shows.

    It lives where the rule draws: on the generator's device when one is given (weights are drawn on
    the CPU and then moved, as one process does), else on the device of ``param``'s shards.
    """
    device = generator.device if generator is not None else param.device
    return torch.full(param.shape, float("nan"), dtype=param.dtype, device=device)


def keep_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the slice of ``full`` that this rank owns into the local shard of the DTensor ``param``.

    The slice is the one ``distribute_tensor`` cuts for ``param``'s mesh and placements (any number of
    mesh dimensions, uneven shards included). Where every placement is ``Shard`` or ``Replicate`` the
    slice is one box of ``full``, copied directly: no DTensor is made, so nothing but the caller holds
    on to ``full`` afterwards. Other placements (``_StridedShard``) go through ``distribute_tensor``
    with ``src_data_rank=None``, which cuts this rank's piece from its own ``full``, without communication.
    """
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    with torch.no_grad():
        shard = param.to_local()
        if all(type(p) in (Shard, Replicate) for p in param.placements):
            shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
            shard.copy_(full[tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))])
        else:
            local = distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
            shard.copy_(local.to_local())


def release(full: torch.Tensor) -> None:
    """Free a stand-in's memory now, not when the last of its views goes (a caller's loop variable can
    keep one until its next iteration): views of it must not be used after this."""
    full.untyped_storage().resize_(0)


def full_params(roled: Iterable[RoledParam], generator: torch.Generator | None = None) -> Iterator[RoledParam]:
    """Yield each roled parameter; a DTensor one as a full-size local stand-in whose shard is kept afterwards.

    Use as the loop of an initializer: the loop body fills ``p.param`` (and its ``p.matrices()``) as if
    the model were on one process; when the loop asks for the next parameter the owned slice is copied
    into the shard and the stand-in's memory is freed (``release``), so one full parameter at a time
    exists beside the shards. A loop left by an exception leaves that shard as it was.
    """
    for p in roled:
        if not is_dtensor(p.param):
            yield p
            continue
        full = full_like(p.param, generator)
        yield dataclasses.replace(p, param=full)
        keep_shard(p.param, full)
        release(full)


@contextlib.contextmanager
def _full_direct_params(module: nn.Module) -> Iterator[None]:
    sharded = {name: p for name, p in module.named_parameters(recurse=False) if is_dtensor(p)}
    if not sharded:
        yield
        return
    fulls = {name: full_like(p) for name, p in sharded.items()}
    for name, full in fulls.items():
        module._parameters[name] = nn.Parameter(full, requires_grad=sharded[name].requires_grad)
    try:
        yield
        for name, p in sharded.items():
            keep_shard(p, module._parameters[name])
            release(module._parameters[name])
    finally:
        for name, p in sharded.items():
            module._parameters[name] = p


def full_modules(modules: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """Yield each module with its own DTensor parameters swapped for full stand-ins, restored afterwards.

    For initializers that call a module's own ``reset_parameters`` (the ``torch_default`` strategy): the
    module draws its full parameters as on one process and each rank keeps its shards. Only the
    module's direct parameters are swapped (one module's worth of full tensors at a time); a reset that
    draws into a descendant's parameters would draw into its DTensor, which is why the checks in
    ``initcore.distributed`` compare the gathered model with the one-process model.
    """
    for module in modules:
        with _full_direct_params(module):
            yield module
