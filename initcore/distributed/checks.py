"""The checks of a sharded init, as functions over gathered tensors, and ``check`` that runs them all.

A sharded init can go wrong in ways a variance check does not see. For each parameter of the gathered
model (``initcore.distributed.gather``):

- ``distribution``: its values come from the strategy's distribution: a Kolmogorov-Smirnov test of each
  matrix against the distribution the strategy declares for it (``init.promise``, where the recipe
  names a strategy that declares one), else a two-sample test against the same parameter of the
  one-process model drawn at another seed (so a user's own init has a target too);
- ``independence``: no two ranks' shards are equal, their element-wise correlation is within what
  independent draws give, and every weight matrix has full rank;
- ``identical``: bit-equal to the one-process model of the same seed; ``invariant``: bit-equal
  across world sizes;
- ``initialized``: no rank holds a NaN after init, though every piece ``to_empty`` made was NaN
  before it (poison); ``replicas``: ranks that hold the same region hold the same bytes (HSDP's replica
  groups, tensor parallel's replicated norms);
- ``placement``: bit-equal to the same parameter under each of the recipe's ``variants``, the same model
  sharded otherwise (``Shard(1)`` for ``Shard(0)``, tensor parallel for FSDP2): a sharded init must not
  depend on how the tensor is cut (pytorch/pytorch#168058).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore.distributed import launch
from initcore.distributed.gather import RankResult, Recipe, Region, Scattered, assemble, run_recipe
from initcore.models.roles import RoledParam
from initcore.threads import one_thread

# Family-wise false-alarm rates, split over the tests of one report by Bonferroni: with ~100 KS tests and
# ~1000 shard pairs per report, each single test then runs at ~1e-5 and 1e-6, and a correct init fails a
# report with probability < 1e-3. A wrong one is far outside: identical shards have r = 1, where the bound
# for a 32 x 128 shard is ~0.08; a std off by sqrt(2) (fans from the local shard) is a KS distance of ~0.1
# against a critical ~0.03.
KS_FAMILY_ALPHA = 1e-3
CORRELATION_FAMILY_ALPHA = 1e-3
WORLD_SIZES = (1, 2, 4)


# --- statistics ---------------------------------------------------------------------------------------------


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x < 0.2:  # the series converges slowly there and the probability is 1 to 1e-9
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


def ks_2samp(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(D, p)``, D the largest distance of the two empirical CDFs.

    p is the asymptotic Kolmogorov tail at (sqrt(ne) + 0.12 + 0.11/sqrt(ne)) D with ne = nm/(n+m)
    (Stephens' correction, as in Numerical Recipes' ``kstwo``); it matches ``scipy.stats.ks_2samp``'s
    exact p to a few percent for samples of thousands, which is what weights are.
    """
    x = np.sort(a.detach().cpu().double().flatten().numpy())
    y = np.sort(b.detach().cpu().double().flatten().numpy())
    n, m = x.size, y.size
    if n == 0 or m == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    points = np.concatenate([x, y])
    d = float(np.abs(np.searchsorted(x, points, side="right") / n - np.searchsorted(y, points, side="right") / m).max())
    ne = n * m / (n + m)
    return d, kolmogorov_sf((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d)


def ks_1samp(sample: torch.Tensor, cdf: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """One-sample Kolmogorov-Smirnov test of ``sample`` against the distribution with CDF ``cdf``: ``(D, p)``,
    p the asymptotic Kolmogorov tail at (sqrt(n) + 0.12 + 0.11/sqrt(n)) D (Stephens' correction)."""
    x = np.sort(sample.detach().cpu().double().flatten().numpy())
    n = x.size
    if n == 0:
        raise ValueError("ks_1samp needs a non-empty sample")
    f = np.asarray(cdf(x), dtype=np.float64)
    ranks = np.arange(1, n + 1) / n
    d = float(max((ranks - f).max(), (f - (ranks - 1 / n)).max()))
    return d, kolmogorov_sf((math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d)


def normal_quantile(p: float) -> float:
    """The standard normal quantile Phi^(-1)(p)."""
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def correlation_bound(n: int, tests: int, alpha: float = CORRELATION_FAMILY_ALPHA) -> float:
    """Largest |r| that ``tests`` correlations of n independent pairs reach with probability ``alpha``.

    For independent x, y with finite fourth moments, sqrt(n) r -> N(0, 1) (so r ~ N(0, 1/n)); with
    Bonferroni over the tests each is two-sided at alpha/tests: |r| <= Phi^(-1)(1 - alpha/(2 tests)) / sqrt(n).
    """
    return normal_quantile(1 - alpha / (2 * max(1, tests))) / math.sqrt(n)


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped tensors, element by element (float64)."""
    x, y = x.double().flatten(), y.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def is_random(t: torch.Tensor) -> bool:
    """Whether ``t`` holds more than one value: drawn, not set to a constant (zeros, ones)."""
    flat = t.flatten()
    return flat.numel() > 1 and bool((flat != flat[0]).any())


def cut(full: torch.Tensor, region: Region) -> torch.Tensor:
    """The piece of ``full`` at ``region``: a box ``(offset, shape)``, or ``Scattered`` flat indices."""
    if isinstance(region, Scattered):
        return full.reshape(-1)[region.flat.reshape(-1)].reshape(region.flat.shape)
    offset, shape = region
    return full[tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))]


def _crop(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    common = tuple(min(a, b) for a, b in zip(x.shape, y.shape, strict=True))
    index = tuple(slice(0, c) for c in common)
    return x[index], y[index]


def matrices(name: str, full: torch.Tensor, roles: Mapping[str, tuple]) -> list[torch.Tensor]:
    """The weight matrices of a parameter: per packed chunk where its role says so, else the tensor
    itself as (shape[0], rest); none for a vector."""
    if full.dim() < 2:
        return []
    if name in roles:
        role, chunks, transposed, parts, block = roles[name]
        return RoledParam(name, role, full, chunks, block, transposed, parts).matrices()
    return [full.reshape(full.shape[0], -1)]


@dataclass(frozen=True)
class Independence:
    """The shards of one parameter against each other, and the ranks of its matrices."""

    pairs: int  # pairs of distinct shards compared
    equal_pairs: list[tuple[int, int]]  # (i, j) of shards with the same values
    max_abs_r: float  # the largest |correlation| of a pair; NaN where there are no pairs
    shard_elements: int  # elements of the smallest pair compared: the n of the correlation bound
    rank_deficient: list[tuple[int, int]]  # (rank, full rank) of each matrix below full rank

    def ok(self, bound: float) -> bool:
        """No equal shards, no matrix below full rank, and no correlation beyond ``bound``."""
        return not self.equal_pairs and not self.rank_deficient and not (self.max_abs_r > bound)


def rank_deficient(name: str, full: torch.Tensor, roles: Mapping[str, tuple]) -> list[tuple[int, int]]:
    """``(rank, full rank)`` of each matrix of a parameter that is below full rank (float64 SVD: a drawn
    matrix has full rank with probability 1; repeated blocks of rows or columns do not)."""
    out = []
    for m in matrices(name, full, roles):
        rank = int(torch.linalg.matrix_rank(m.double()))
        if rank < min(m.shape):
            out.append((rank, min(m.shape)))
    return out


def independence(name: str, full: torch.Tensor, regions: Sequence[Region], roles: Mapping[str, tuple],
                 deficient: list[tuple[int, int]] | None = None) -> Independence:
    """Compare the distinct shards of one parameter: ``regions`` has one entry per rank (repeats are
    replicas of one shard). ``deficient``: ``rank_deficient`` of ``full`` if already known."""
    distinct = list(dict.fromkeys(regions))
    pieces = [cut(full, r) for r in distinct]
    equal, largest, smallest = [], math.nan, 0
    for (i, x), (j, y) in combinations(enumerate(pieces), 2):
        x, y = _crop(x, y)
        if x.numel() < 2:
            continue
        if torch.equal(x, y):
            equal.append((i, j))
        r = abs(correlation(x, y))
        largest = r if math.isnan(largest) else max(largest, r)
        smallest = x.numel() if smallest == 0 else min(smallest, x.numel())
    if deficient is None:
        deficient = rank_deficient(name, full, roles)
    pairs = len(distinct) * (len(distinct) - 1) // 2
    return Independence(pairs, equal, largest, smallest, deficient)


# --- the whole check ---------------------------------------------------------------------------------------


@dataclass
class ShardReport:
    """The outcome of ``check``: a table, one row per world size and parameter, and what failed."""

    recipe: str
    table: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the checks could not see

    @property
    def ok(self) -> bool:
        return not self.failures

    def failed(self, check: str) -> pd.DataFrame:
        """Rows where ``check`` (one of ``CHECKS``) is False; None (not applicable) is not a failure."""
        return self.table[self.table[check].eq(False)]


# The boolean columns of a report; None where a check does not apply (a constant parameter has no
# distribution to test and nothing to be independent of, a plain tensor no shards).
CHECKS = ("distribution", "independent", "identical", "invariant", "initialized", "replicas", "placement")


def _run(recipe: Recipe, world_size: int, seed: int, backend: str, timeout_s: float | None) -> list[RankResult]:
    results = launch.group(world_size, backend).run(run_recipe, recipe, seed, timeout_s=timeout_s)
    assemble(results)
    return results


def floating_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating buffers by name, detached: what the checks compare."""
    out = {n: p.detach() for n, p in model.named_parameters()}
    out.update({n: b.detach() for n, b in model.named_buffers() if b is not None and b.is_floating_point()})
    return out


def gathered_model(reference: nn.Module, full: Mapping[str, torch.Tensor]) -> nn.Module:
    """``reference`` (a one-process model of the same architecture) with the gathered tensors copied in."""
    with torch.no_grad():
        for name, t in floating_state(reference).items():
            t.copy_(full[name])
    return reference


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical: same shape, dtype and bytes (NaN equals the same NaN; -0.0 is not 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


_ONE_PROCESS: dict[tuple, dict[str, torch.Tensor]] = {}


def _one_process(reference: Callable[[torch.Generator], nn.Module], seed: int, key: tuple | None):
    """The one-process model's tensors at ``seed``, kept by ``key`` (a recipe's ``reference_key``) so that
    recipes sharing a reference (one model under FSDP and under TP) build it once."""
    if key is not None and (key, seed) in _ONE_PROCESS:
        return _ONE_PROCESS[(key, seed)]
    with one_thread():  # as the ranks run: a QR (orthogonal) rounds differently on two threads
        state = floating_state(reference(torch.Generator().manual_seed(seed)))
    if key is not None:
        if len(_ONE_PROCESS) >= 16:
            _ONE_PROCESS.clear()
        _ONE_PROCESS[(key, seed)] = state
    return state


def check(recipe: Recipe, world_sizes: Iterable[int] = WORLD_SIZES, *, seed: int = 0,
          reference: Callable[[torch.Generator], nn.Module] | None = None, backend: str = "gloo",
          timeout_s: float | None = None, runs: Mapping[int, list[RankResult]] | None = None,
          variants: Mapping[str, Recipe] | None = None) -> ShardReport:
    """Run ``recipe(mesh, generator)`` on each world size and check what it gives (see the module docstring).

    Args:
        recipe: builds and initializes the sharded model on a rank (``initcore.distributed.recipes``, or
            the user's trainer code); a module-level function or picklable object.
        world_sizes: the world sizes to run; each gets one reused process group (``launch.group``).
        seed: every rank's generator is ``torch.Generator().manual_seed(seed)``.
        reference: ``reference(generator)`` builds the one-process model (``recipe.reference`` if the
            recipe has one). Without it the model of the smallest world size stands in for one
            process: ``identical`` is then world-size invariance, and the distribution's reference is
            the recipe at that world size at seed + 1.
        backend: ``"gloo"`` (CPU ranks) or ``"nccl"`` (one CUDA device per rank).
        timeout_s: bound on each world size's run; a rank that dies or hangs raises ``RankFailure``.
        runs: results of ``run_recipe`` already gathered, by world size (a caller that keeps them).
        variants: label -> a recipe of the same model sharded another way (``Shard(1)`` for ``Shard(0)``);
            each runs at every world size, and every parameter must come out bit-equal (``placement``).

    Returns:
        A ``ShardReport``: ``table`` (world_size, name, role, shape, layout, std, target_std, ks_d, ks_p,
        max_r, r_bound, full_rank, and one column per check of ``CHECKS``), ``failures`` and ``notes``.
    """
    sizes = sorted(set(world_sizes))
    if not sizes or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in sizes):
        raise ValueError(f"world_sizes must be positive integers, got {list(world_sizes)!r}")
    runs = dict(runs or {})
    for w in sizes:
        if w not in runs:
            runs[w] = _run(recipe, w, seed, backend, timeout_s)
        assemble(runs[w])
    reference = reference or getattr(recipe, "reference", None)
    if reference is not None:
        key = getattr(recipe, "reference_key", None) if reference is getattr(recipe, "reference", None) else None
        one_process = _one_process(reference, seed, key() if key else None)
        other_seed = _one_process(reference, seed + 1, key() if key else None)
    else:
        one_process = runs[sizes[0]][0].full
        other_seed = _run(recipe, sizes[0], seed + 1, backend, timeout_s)[0].full
    others = {label: {w: _run(variant, w, seed, backend, timeout_s)[0].full for w in sizes}
              for label, variant in (variants or {}).items()}
    name = getattr(recipe, "name", None) or getattr(recipe, "__qualname__", None) or repr(recipe)
    return _report(str(name), sizes, runs, one_process, other_seed, recipe, others)


def _digest(t: torch.Tensor | None) -> bytes:
    if t is None:
        return b""
    return hashlib.sha1(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).digest()


# What depends on a parameter's values only (randomness, KS, matrix ranks), by (name, role, its bytes, the
# reference's bytes): a model that is the same at every world size, or under two shardings, costs one
# computation. Bounded: a session checks a handful of small models.
_PER_CONTENT: dict[tuple, tuple[bool, tuple[float, float], list[tuple[int, int]]]] = {}
_PER_CONTENT_MAX = 4096


def _per_content(name: str, t: torch.Tensor, other: torch.Tensor | None, roles: Mapping[str, tuple],
                 targets: tuple | None) -> tuple[bool, tuple[float, float], list[tuple[int, int]]]:
    """(drawn, (KS D, p), rank deficiencies) of one parameter. KS against ``targets`` (one declared
    distribution per matrix: the largest D, and the smallest p times the number of matrices, Bonferroni)
    where the strategy declares them, else against ``other``, the one-process draw at another seed."""
    key = (name, roles.get(name), tuple(t.shape), _digest(t), _digest(other), targets)
    if key not in _PER_CONTENT:
        drawn = is_random(t) and not bool(torch.isnan(t).any()) and (
            targets is not None or (other is not None and is_random(other)))
        ks = (math.nan, math.nan)
        if drawn and targets is not None:
            tests = [ks_1samp(m, target.cdf) for m, target in zip(matrices(name, t, roles), targets, strict=True)]
            ks = max(d for d, _ in tests), min(1.0, len(tests) * min(p for _, p in tests))
        elif drawn:
            ks = ks_2samp(t, other)
        if len(_PER_CONTENT) >= _PER_CONTENT_MAX:
            _PER_CONTENT.clear()
        _PER_CONTENT[key] = (drawn, ks, rank_deficient(name, t, roles) if drawn else [])
    return _PER_CONTENT[key]


def declared_targets(recipe: Recipe, name: str, t: torch.Tensor, roles: Mapping[str, tuple]) -> tuple | None:
    """The distribution the recipe's strategy declares for each matrix of parameter ``name``
    (``recipe.promise``, see ``TransformerRecipe``), or None where it declares none."""
    promise = getattr(recipe, "promise", None)
    if promise is None or name not in roles or t.dim() < 2:  # a vector's law depends on its layer's fans
        return None
    role, chunks, _, parts, block = roles[name]
    try:
        return tuple(promise(role, m.shape[1], m.shape[0], block, parts[i] if i < len(parts) else "", chunks)
                     for i, m in enumerate(matrices(name, t, roles)))
    except ValueError:  # a strategy without declarations (see initcore.init.targets)
        return None


def _report(name: str, sizes: list[int], runs: Mapping[int, list[RankResult]],
            one_process: Mapping[str, torch.Tensor], other_seed: Mapping[str, torch.Tensor],
            recipe: Recipe, variants: Mapping[str, Mapping[int, Mapping[str, torch.Tensor]]]) -> ShardReport:
    with one_thread():  # small SVDs and reductions: two threads contend, 10-20x slower
        return _rows(name, sizes, runs, one_process, other_seed, recipe, variants)


def _rows(recipe_name: str, sizes: list[int], runs: Mapping[int, list[RankResult]],
          one_process: Mapping[str, torch.Tensor], other_seed: Mapping[str, torch.Tensor],
          recipe: Recipe, variants: Mapping[str, Mapping[int, Mapping[str, torch.Tensor]]]) -> ShardReport:
    first = runs[sizes[0]][0].full
    roles = runs[sizes[0]][0].roles
    targets = {n: declared_targets(recipe, n, t, roles) for n, t in first.items()}

    def per_content(n: str, t: torch.Tensor):
        return _per_content(n, t, other_seed.get(n), roles, targets[n])

    drawn = {(w, n): per_content(n, t)[0] for w in sizes for n, t in runs[w][0].full.items()}
    # Bonferroni over the report: one KS test per drawn parameter and world size (conservative where the
    # contents repeat, as they do when the init is right), one correlation per pair of distinct shards
    ks_alpha = KS_FAMILY_ALPHA / max(1, sum(drawn.values()))
    pair_tests = 0
    for w in sizes:
        for n in runs[w][0].full:
            k = len({r.regions[n] for r in runs[w]})
            pair_tests += k * (k - 1) // 2 if drawn[(w, n)] else 0
    rows, failures, notes = [], [], []
    for w in sizes:
        results = runs[w]
        for n, t in results[0].full.items():
            is_drawn, (d, p), deficient = per_content(n, t)
            role = roles.get(n, ("-",))[0]
            layout = results[0].layouts[n]
            ind = independence(n, t, [r.regions[n] for r in results], roles, deficient) if is_drawn else None
            bound = correlation_bound(ind.shard_elements, pair_tests) if ind and ind.shard_elements else math.nan
            digests: dict[Region, set[str]] = {}
            for r in results:
                digests.setdefault(r.regions[n], set()).add(r.digests[n])
            nan_ranks = [r.rank for r in results if n in r.nan]
            other = other_seed.get(n)
            differs = [label for label, by_size in variants.items()
                       if n not in by_size[w] or not same_bits(t, by_size[w][n])]
            row = {
                "world_size": w, "name": n, "role": role, "shape": "x".join(map(str, t.shape)) or "scalar",
                "layout": layout if layout == "local" else f"{layout} over {w}",
                "std": float(t.double().std()) if t.numel() > 1 else math.nan,
                "target_std": _target_std(targets[n], other),
                "ks_d": d, "ks_p": p,
                "max_r": ind.max_abs_r if ind else math.nan, "r_bound": bound,
                "full_rank": (not deficient) if is_drawn and t.dim() >= 2 else None,
                "distribution": (p > ks_alpha) if is_drawn else None,
                "independent": ind.ok(bound) if ind and ind.pairs else None,
                "identical": n in one_process and same_bits(t, one_process[n].cpu()),
                "invariant": same_bits(t, first[n]),
                "initialized": not nan_ranks and not bool(torch.isnan(t).any()),
                "replicas": all(len(v) == 1 for v in digests.values()),
                "placement": not differs if variants else None,
            }
            rows.append(row)
            failures += _explain(f"world size {w}, {n} ({role})", row, ind, bound, ks_alpha, nan_ranks, sizes[0])
            if differs:
                failures.append(f"world size {w}, {n} ({role}): not bit-identical under {', '.join(differs)} "
                                f"(sharded as {layout}): the init depends on how the tensor is cut")
        if results[0].poisoned == 0:
            notes.append(f"world size {w}: the recipe never called to_empty, so no memory was poisoned: "
                         "memory left uninitialized by its init would not show as NaN")
    return ShardReport(recipe_name, pd.DataFrame(rows), failures, notes)


def _target_std(targets: tuple | None, other: torch.Tensor | None) -> float:
    """The declared std (pooled over a parameter's matrices), else the std of the one-process draw."""
    if targets:
        return math.sqrt(sum(t.variance for t in targets) / len(targets))
    return float(other.double().std()) if other is not None and other.numel() > 1 else math.nan


def _explain(where: str, row: Mapping, ind: Independence | None, bound: float, ks_alpha: float,
             nan_ranks: list[int], first_size: int) -> list[str]:
    out = []
    if row["distribution"] is False:
        out.append(f"{where}: not the strategy's distribution: KS D {row['ks_d']:.4g}, p {row['ks_p']:.2g} <= "
                   f"{ks_alpha:.2g} (std {row['std']:.4g}, target {row['target_std']:.4g})")
    if ind and ind.equal_pairs:
        out.append(f"{where}: shards {', '.join(f'{i} and {j}' for i, j in ind.equal_pairs)} are equal")
    if ind and ind.max_abs_r > bound:
        out.append(f"{where}: shards correlate, |r| {ind.max_abs_r:.3g} > {bound:.3g} (independent draws of "
                   f"{ind.shard_elements} values)")
    if ind and ind.rank_deficient:
        out.append(f"{where}: matrix rank {', '.join(f'{a} of {b}' for a, b in ind.rank_deficient)}")
    if not row["identical"]:
        out.append(f"{where}: not bit-identical to the one-process init of the same seed")
    if not row["invariant"]:
        out.append(f"{where}: not bit-identical to world size {first_size}")
    if not row["initialized"]:
        ranks = ", ".join(map(str, nan_ranks)) or "none (in the gathered tensor)"
        out.append(f"{where}: NaN after init, memory to_empty left as it was; on ranks {ranks}")
    if not row["replicas"]:
        out.append(f"{where}: ranks that hold the same region hold different values (replicas disagree)")
    return out
