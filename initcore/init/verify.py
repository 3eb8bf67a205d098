"""What ``init.apply`` refuses to guess, and what it checks after drawing.

Before drawing (:func:`check_layout`): a weight whose fans would come out wrong is an error that names the
fix, where its role says nothing of its layout: a Linear named or shaped like a fused q/k/v projection
whose role was inferred from its type alone (drawn as one (3E, E) matrix, Xavier's fans would be those of
3E), and a Hugging Face ``Conv1D`` weight, stored (in, out), given a plain role (its fans would be swapped).

After drawing (:func:`check_drawn`): every matrix against the strategy's own promise (``promise``), by the
audit's tests without the shape test (``auditing.fit.match``, ``shape=False``): its std within 5.5 standard
errors, its mean, no entry beyond a bounded family's bound, and a normal's largest entry not impossibly
small. A sample of at most ``SAMPLE`` entries (a generator of its own: the caller's random streams are not
touched), on one thread (``threads.one_thread``: on a busy 2-core machine a two-thread gather of 4096
entries took 20 ms, one thread 0.02 ms), keeps it cheap; a constant is compared exactly. The false-alarm
rate is below 1e-6 per matrix (see ``auditing.fit``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from initcore.auditing import fit as F
from initcore.init.targets import Target
from initcore.models.roles import RoledParam, looks_fused, name_pattern, stores_transposed

SAMPLE = 4096  # entries read per matrix: a std to 1.1% (one standard error of a normal's), enough for a bug


class InitMismatchError(ValueError):
    """A parameter ``init.apply`` drew does not follow the strategy's promise."""


def check_layout(model: nn.Module, params: Iterable[RoledParam]) -> None:
    """Raise ValueError, naming each and the roles= entry that fixes it, for weights whose fans a strategy
    would get wrong (see the module docstring)."""
    modules = dict(model.named_modules())
    problems = []
    for p in params:
        owner, _, attr = p.name.rpartition(".")
        module = modules.get(owner, model)
        pattern = name_pattern(p.name)
        if stores_transposed(module) and attr == "weight" and not p.transposed:
            problems.append(f"{p.name} is a {type(module).__name__} weight stored (in, out): a plain role would swap "
                            f"its fans; pass roles={{{pattern!r}: Role({p.role!r}, transposed=True)}}")
        elif p.inferred and p.chunks == 1 and p.param.dim() == 2 and \
                looks_fused(owner, attr, module, tuple(p.param.shape)) > 1:
            problems.append(f"{p.name} {tuple(p.param.shape)} looks like a fused q/k/v projection and its role "
                            f"{p.role!r} was guessed from its type: drawn as one matrix its fans would be those of "
                            f"3E; pass roles={{{pattern!r}: ('qkv', 3)}} (or Role('qkv', parts=('q', 'k', 'v'))), "
                            f"or {{{pattern!r}: 'hidden'}} if it is one projection")
    if problems:
        more = f" (and {len(problems) - 1} more like it)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)


def _sample(w: torch.Tensor, gen: torch.Generator) -> tuple[np.ndarray, int]:
    """A sorted float64 sample of at most ``SAMPLE`` entries of ``w``, gathered in place (no copy of the whole)."""
    m = w.detach() if w.dim() == 2 else w.detach().reshape(w.shape[0], -1)
    n = m.numel()
    if n > SAMPLE:
        rows = torch.randint(m.shape[0], (SAMPLE,), generator=gen).to(m.device)
        cols = torch.randint(m.shape[1], (SAMPLE,), generator=gen).to(m.device)
        x = m[rows, cols]
    else:
        x = m.reshape(-1)
    return np.sort(x.to(torch.float64).cpu().numpy()), n


def mismatch(w: torch.Tensor, target: Target, gen: torch.Generator) -> str:
    """'' if ``w`` is consistent with ``target``, else what is off (see the module docstring)."""
    if target.family == "constant":
        return "" if bool((w == target.scale).all()) else f"not all {target.scale:g}"
    x, n = _sample(w, gen)
    if not np.all(np.isfinite(x)):
        return "NaN/Inf"
    mean, std = float(x.mean()), float(x.std())
    peak = max(abs(float(x[0]) - mean), abs(float(x[-1]) - mean)) / std if std > 0 else math.inf
    f = F.Fit("normal", std, math.nan, mean, std, peak, math.nan, math.nan, len(x))
    ev = F.Evidence(x, n, 0)
    if target.family == "orthogonal":  # its entries: one coordinate of a random unit vector, Var g^2/n, nearly normal
        v = F.match(ev, f, "normal", target.std, shape=False)
    else:
        v = F.match(ev, f, target.family, target.scale, target.n_sigma, target.n, target.mean, shape=False)
    return "" if v.ok else f"{v.why} (std {std:.4g}, promised {target.std:.4g})"


__all__ = ["InitMismatchError", "SAMPLE", "check_layout", "mismatch"]
