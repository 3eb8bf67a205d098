"""Inside a rank: run a recipe with poisoned memory, then gather what it gave for the checks.

``run_recipe`` is the task ``initcore.distributed.check`` hands every rank. While the recipe runs,
``nn.Module.to_empty`` is wrapped so that whatever it materializes (every local shard, every plain
parameter, every floating buffer) is filled with NaN before the recipe's init sees it: memory that no
init fills then shows as NaN instead of as the zeros fresh pages usually hold. Afterwards each rank
reports what it holds (placements, the region of the full tensor its shard is, NaN, a digest of its
bytes) and rank 0 returns the full tensors, gathered with ``DTensor.full_tensor``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from initcore.distributed.launch import world_mesh
from initcore.init.sharded import is_dtensor
from initcore.models import param_roles

Recipe = Callable[..., nn.Module]  # recipe(mesh, generator) -> the sharded model, initialized


@dataclass
class RankResult:
    """What one rank holds after a recipe ran; ``full`` is filled by ``assemble`` in the calling process."""

    rank: int
    world_size: int
    layouts: dict[str, str]  # name -> placements over the mesh, "local" for a plain tensor
    regions: dict[str, Region]  # name -> where this rank's piece lies in the full tensor
    shapes: dict[str, tuple[int, ...]]  # name -> the full tensor's shape
    nan: list[str]  # names whose local piece holds a NaN after init
    digests: dict[str, str]  # name -> sha1 of the local piece's bytes
    poisoned: int  # how many to_empty calls were poisoned
    pieces: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> this rank's piece, on the CPU
    full: dict[str, torch.Tensor] | None = None  # name -> the full tensor (rank 0; see assemble)
    roles: dict[str, tuple[str, int, bool, tuple[str, ...], int | None]] = field(default_factory=dict)
    generator_state: torch.Tensor | None = None  # rank 0: the generator after the recipe, to draw inputs on


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of ``t``: a DTensor's local shard, a plain tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def floating_state(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters, then floating buffers, by name: everything an init must fill."""
    yield from model.named_parameters()
    for name, b in model.named_buffers():
        if b is not None and b.is_floating_point():
            yield name, b


def poison(model: nn.Module) -> None:
    """Fill every local piece of ``model``'s floating parameters and buffers with NaN."""
    with torch.no_grad():
        for _, t in floating_state(model):
            if t.is_floating_point():
                local(t).fill_(float("nan"))


@contextlib.contextmanager
def poisoned_to_empty() -> Iterator[list[int]]:
    """Inside: ``nn.Module.to_empty`` fills what it materializes with NaN; yields ``[calls]``."""
    original = nn.Module.to_empty
    calls = [0]

    def to_empty(self, *, device, recurse: bool = True):
        out = original(self, device=device, recurse=recurse)
        poison(self)
        calls[0] += 1
        return out

    nn.Module.to_empty = to_empty
    try:
        yield calls
    finally:
        nn.Module.to_empty = original


@dataclass(frozen=True, eq=False)
class Scattered:
    """Where a piece that is not one box of the full tensor lies (``_StridedShard``, FSDP over a
    tensor-parallel dimension): the flat index in the full tensor of each of its elements."""

    flat: torch.Tensor  # int64, in the piece's shape
    key: str  # sha1 of ``flat``: pieces at the same place compare equal

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scattered) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


Region = tuple[tuple[int, ...], tuple[int, ...]] | Scattered  # (offset, shape) of a box, or Scattered


def _region(t: torch.Tensor) -> Region:
    if not is_dtensor(t):
        return (0,) * t.dim(), tuple(t.shape)
    if _contiguous_region(t):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        return tuple(int(o) for o in offset), tuple(int(s) for s in shape)
    from torch.distributed.tensor import distribute_tensor

    # the same placements applied to the indices of the full tensor: this rank's piece of them says where
    # its piece of ``t`` lies (cut locally, src_data_rank=None: no communication)
    index = torch.arange(t.numel(), device=t.to_local().device).view(t.shape)
    flat = distribute_tensor(index, t.device_mesh, t.placements, src_data_rank=None).to_local().cpu()
    return Scattered(flat, hashlib.sha1(flat.numpy().tobytes()).hexdigest())


def _digest(t: torch.Tensor) -> str:
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha1(data).hexdigest()


def _roles(model: nn.Module, roles=None) -> dict[str, tuple[str, int, bool, tuple[str, ...], int | None]]:
    """Each parameter's role (``roles``: a recipe's own, as ``init.apply`` takes them), for the checks' rows."""
    try:
        return {p.name: (p.role, p.chunks, p.transposed, p.parts, p.block) for p in param_roles(model, roles)}
    except ValueError:  # a user's model that declares no roles: the checks group by parameter instead
        return {}


def _contiguous_region(t: torch.Tensor) -> bool:
    """Whether this rank's piece of ``t`` is one box of the full tensor (a plain tensor, or a DTensor whose
    placements are all ``Shard`` or ``Replicate``; ``_StridedShard`` interleaves, ``Partial`` sums)."""
    if not is_dtensor(t):
        return True
    from torch.distributed.tensor import Replicate, Shard

    return all(type(p) in (Shard, Replicate) for p in t.placements)


def run_recipe(recipe: Recipe, seed: int) -> RankResult:
    """Task for every rank: ``recipe(mesh, Generator().manual_seed(seed))`` under poisoned ``to_empty``.

    Every rank returns its pieces (the parent puts them together: no collective, and what each rank holds
    is what is checked); a tensor whose pieces are not boxes of the full tensor is gathered with
    ``full_tensor`` instead, to rank 0.
    """
    mesh = world_mesh()
    generator = torch.Generator().manual_seed(seed)
    with poisoned_to_empty() as calls:
        model = recipe(mesh, generator)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the recipe returned {type(model).__name__}; it must return the sharded model (nn.Module)")
    rank = dist.get_rank()
    result = RankResult(rank, dist.get_world_size(), {}, {}, {}, [], {}, calls[0])
    full = {}
    with torch.no_grad():
        for name, t in floating_state(model):
            piece = local(t)
            result.layouts[name] = ", ".join(map(str, t.placements)) if is_dtensor(t) else "local"
            result.regions[name] = _region(t)
            result.shapes[name] = tuple(t.shape)
            result.digests[name] = _digest(piece)
            if torch.isnan(piece).any():
                result.nan.append(name)
            if _contiguous_region(t):
                result.pieces[name] = piece.detach().cpu().clone()
            else:
                whole = t.full_tensor()  # a collective: every rank, in the same order (placements agree)
                if rank == 0:
                    full[name] = whole.detach().cpu().clone()
    if rank == 0:
        result.full, result.generator_state = full, generator.get_state()
        result.roles = _roles(model, getattr(recipe, "roles", None))
    return result


def assemble(results: list[RankResult]) -> dict[str, torch.Tensor]:
    """The full tensors, put together from every rank's pieces (and rank 0's gathered ones); kept in
    ``results[0].full`` so a second call costs nothing. Replicas write the same region; whether they
    agree is checked from their digests."""
    first = results[0]
    if first.full is not None and len(first.full) == len(first.shapes):
        return first.full
    full = dict(first.full or {})
    for name, shape in first.shapes.items():
        if name in full:
            continue
        out = None
        for r in results:
            piece = r.pieces[name]
            if out is None:
                out = torch.empty(shape, dtype=piece.dtype)
            offset, size = r.regions[name]
            out[tuple(slice(o, o + s) for o, s in zip(offset, size, strict=True))] = piece
        full[name] = out
    first.full = {name: full[name] for name in first.shapes}  # in the model's order
    return first.full
