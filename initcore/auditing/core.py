"""``audit(model)``: what init each parameter of a model actually has, and every sign that it is not the
intended one.

One row per parameter (tied parameters once, every name listed): its layout (``layout.py``), the family
fitted to its values (``fit.py``), the rules of the catalogue it is consistent with (``catalogue.py``), the
name the audit gives it (``rule``: the first consistent rule in the catalogue's order, preferring rules of
the fitted family), and flags, each with its evidence:

- ``uninitialized``: NaN or Inf, or values no family explains (what ``to_empty`` or ``torch.empty`` left);
- ``torch_default``: left at its module's own default while its peers (same module type and attribute)
  follow another rule;
- ``packed``: a fused q/k/v projection drawn as one matrix (fans of 3E), consistent with a rule only on
  the stored tensor's fans;
- ``transposed``: a weight stored (in, out) (Hugging Face's Conv1D) drawn with torch.nn.init on the stored
  tensor, so with fan_in and fan_out swapped;
- ``equal``: equal values in parameters that do not share storage (a copied init, a reused seed), or in
  the equal halves of one (identical shards); tied parameters are reported as tied, not flagged;
- ``untied``: names that should share one tensor (``tied=``: those tied on the meta model that ``materialize``
  built) that no longer do, as ``to_empty`` leaves them;
- ``differs``: a member of a group (the same name up to block indices) that follows another rule than
  the rest of its group;
- ``expected``: not what ``expect`` says.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore.auditing import catalogue as C
from initcore.auditing import fit as F
from initcore.auditing.layout import Layout, evidence, layouts, n_blocks
from initcore.models import structure
from initcore.models.roles import Role, name_pattern
from initcore.threads import one_thread

FLAGS = ("uninitialized", "untied", "torch_default", "packed", "transposed", "equal", "differs", "expected")
SHARDS = (2, 4, 8)  # equal row blocks of a matrix looked for: what identical draws on 2, 4 or 8 ranks leave


def group_of(name: str, blocks: Sequence[str] = ()) -> str:
    """A parameter's group: its name with block indices made ``*`` (``h.3.attn.c_proj.weight`` ->
    ``h.*.attn.c_proj.weight``), and the name of a repeated block that is not an index (torchvision's
    ``encoder.layers.encoder_layer_3``, see ``models.structure.blocks``) made ``*`` too."""
    for block in blocks:
        if name.startswith(block + "."):
            parent, _, _ = block.rpartition(".")
            name = f"{parent}.*{name[len(block):]}" if parent else f"*{name[len(block):]}"
            break
    return name_pattern(name)


@dataclass
class _Row:
    layout: Layout
    ev: F.Evidence
    fit: F.Fit
    matches: list[_Match]  # best first (see _rank)
    group: str = ""
    expected: str = ""
    expected_ok: bool | None = None
    expected_why: str = ""
    flags: list[tuple[str, str]] | None = None


@dataclass(frozen=True)
class _Model:
    """The model-wide facts rules read: depth, and the widths an initcore config states."""

    n_layers: int
    d_model: int | None = None
    d_ff: int | None = None


def _widths(model: nn.Module) -> tuple[int | None, int | None]:
    cfg = getattr(model, "config", None)
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) else None
                 for v in (getattr(cfg, "d_model", None), getattr(cfg, "d_ff", None)))


def _site(lay: Layout, ctx: _Model, stored: bool = False) -> C.Site:
    if stored:
        return C.Site(lay, lay.stored_fan_in, lay.stored_fan_out, ctx.n_layers, ctx.d_model, ctx.d_ff)
    return C.Site(lay, lay.fan_in, lay.fan_out, ctx.n_layers, ctx.d_model, ctx.d_ff)


def _verdict(ev: F.Evidence, f: F.Fit, t) -> F.Verdict:
    return F.match(ev, f, t.family, t.scale, t.n_sigma, t.n, t.mean)


def _rules_matched(lay: Layout, ev: F.Evidence, f: F.Fit, rules: list[C.Rule], ctx: _Model) -> list[_Match]:
    if f.family in ("nonfinite", "none"):
        return []
    sites = [(_site(lay, ctx), False)]
    if lay.kind == "matrix" and (lay.transposed or lay.chunks > 1) and \
            (lay.stored_fan_in, lay.stored_fan_out) != (lay.fan_in, lay.fan_out):
        sites.append((_site(lay, ctx, stored=True), True))
    found: list[_Match] = []
    seen: set[str] = set()
    for site, stored in sites:
        for i, rule in enumerate(rules):
            if stored and not rule.fan_sensitive or rule.name in seen:
                continue
            try:
                t = rule(site)
            except (ValueError, ZeroDivisionError):
                t = None
            if t is None:
                continue
            v = _verdict(ev, f, t)
            if v.ok:
                seen.add(rule.name)
                # The fitted family breaks ties only where a sample that large resolves families (fit.DECISIVE).
                mismatch = ev.m >= F.DECISIVE and t.family != f.family and \
                    not (t.family == "constant" and f.family in ("zeros", "ones"))
                found.append(_Match(rule.name, v.z, stored, mismatch, i))
    return found


@dataclass(frozen=True)
class _Match:
    rule: str
    z: float  # the scale's error in standard errors
    stored: bool  # read on the stored tensor's fans, not the layer's
    mismatch: bool  # of another family than the fitted one
    index: int  # place in the catalogue


def _rank(rows: list[_Row]) -> None:
    """Order each row's matches, best first: the fitted family; a scale within 3 standard errors (a true rule's is
    beyond with probability 0.27%); the rule that
    explains the most parameters of the same module type and attribute (an init applies one rule per module
    type: torchvision's ResNet convolutions are all kaiming_normal(fan_out), which on a square kernel equals
    xavier_normal(relu) and on a 1x1 one lecun_normal); the catalogue's order (torch.nn.init's own modes
    first, so kaiming_normal on a Conv1D's stored (in, out) outranks the layer's kaiming_normal(fan_out))."""
    peers: dict[tuple[str, str], Counter] = {}
    for row in rows:
        counter = peers.setdefault((row.layout.module, row.layout.attr), Counter())
        counter.update({m.rule for m in row.matches})
    for row in rows:
        counter = peers[(row.layout.module, row.layout.attr)]
        row.matches.sort(key=lambda m: (m.mismatch, abs(m.z) > 3, -counter[m.rule], m.index, m.stored))


def _fingerprint(p: torch.Tensor) -> tuple:
    flat = p.detach().reshape(-1)
    return tuple(p.shape), flat[:64].to(torch.float64).cpu().numpy().tobytes()


def _equal_halves(p: torch.Tensor) -> str:
    """'' or how the rows of a matrix repeat: identical row blocks, as identical draws on k ranks leave them."""
    t = p.detach()
    if t.dim() < 2:
        return ""
    rows = t.shape[0]
    for k in SHARDS:
        if rows % k or rows // k < 1:
            continue
        size = rows // k
        first, second = t[:size].reshape(-1), t[size: 2 * size].reshape(-1)
        if torch.equal(first[:16], second[:16]) and torch.equal(first, second):
            return f"rows 0-{size - 1} equal rows {size}-{2 * size - 1} ({k} identical blocks of {size} rows?)"
    return ""


def audit(model: nn.Module, *, expect: str | Mapping[str, str] | None = None,
          roles: Mapping[str, str | tuple | Role] | None = None, seed: int = 0,
          sample_max: int = F.SAMPLE_MAX, n_layers: int | None = None,
          tied: Sequence[Sequence[str]] = ()) -> pd.DataFrame:
    """One row per parameter of ``model``: layout, fitted family, matching rules and flags (module docstring).

    Args:
        model: any ``nn.Module`` with parameters (not on the meta device).
        expect: a rule for every parameter (a strategy, whose promise is read by each parameter's role, or a
            rule such as ``"normal(0.02)"``), or a mapping from name pattern (fnmatch) to rule; see
            ``catalogue.parse``. The first matching pattern wins; parameters no pattern names are not checked
            against an expectation (the flags still apply).
        roles: name pattern -> role, for ``expect`` strategies on parameters no module declares, and for packed
            (``Role("qkv", parts=("q", "k", "v"))``) or transposed weights.
        seed: seeds the sampling of large parameters (the verdicts do not depend on it but by chance).
        sample_max: entries read from a larger parameter (uniformly at random).
        n_layers: the depth L of depth-scaled rules (default: the model's config, else its repeated blocks).
        tied: groups of names that should be one tensor (``materialize`` returns the meta model's).

    Raises:
        ValueError: no parameters, parameters on the meta device, a rule that does not parse, a pattern that
            matches no parameter.
    """
    expectations = _expectations(model, expect)
    items = layouts(model, roles)
    depth = n_layers if n_layers is not None else n_blocks(model)
    if not (isinstance(depth, int) and depth > 0):
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    ctx = _Model(depth, *_widths(model))
    rules = C.catalogue()
    blocks = [name for name, _ in structure.blocks(model)]
    gen = torch.Generator().manual_seed(seed)
    rows: list[_Row] = []
    by_print: dict[tuple, list[int]] = {}
    for lay, p in items:
        with one_thread():  # small reductions and gathers: two threads on a busy 2-core machine cost 100x more
            ev = evidence(p, gen, sample_max)
        f = F.fit(ev)
        row = _Row(lay, ev, f, _rules_matched(lay, ev, f, rules, ctx), group_of(lay.name, blocks), flags=[])
        rule = next((r for pattern, r in expectations if any(_fnmatch(n, pattern) for n in lay.names)), None)
        if rule is not None:
            _check_expected(row, rule, ctx, p, gen)
        rows.append(row)
        if f.family not in ("zeros", "ones", "constant", "nonfinite"):
            by_print.setdefault(_fingerprint(p), []).append(len(rows) - 1)
            halves = _equal_halves(p)
            if halves:
                row.flags.append(("equal", halves))
    params = [p for _, p in items]
    for members in by_print.values():
        for a, b in zip(members, members[1:], strict=False):
            if torch.equal(params[a].detach(), params[b].detach()):
                for i, j in ((a, b), (b, a)):
                    rows[i].flags.append(("equal", f"equal to {rows[j].layout.name}, which is not tied to it"))
    _rank(rows)
    _flag_untied(rows, tied)
    _flag(rows)
    return _frame(rows)


def _flag_untied(rows: list[_Row], tied: Sequence[Sequence[str]]) -> None:
    where = {name: i for i, row in enumerate(rows) for name in row.layout.names}
    for names in tied:
        held = sorted({where[n] for n in names if n in where})
        if len(held) > 1:
            for i in held:
                others = ", ".join(rows[j].layout.name for j in held if j != i)
                rows[i].flags.append(("untied", f"should be one tensor with {others} (tied where it was built); "
                                                "now separate storage: tie it again after to_empty"))


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _expectations(model: nn.Module, expect) -> list[tuple[str, C.Rule]]:
    if expect is None:
        return []
    if isinstance(expect, str):
        return [("*", C.parse(expect))]
    if not isinstance(expect, Mapping):
        raise ValueError("expect is a rule (a string) or a mapping from name pattern to rule, "
                         f"got {type(expect).__name__}")
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    out = []
    for pattern, text in expect.items():
        if not any(_fnmatch(n, pattern) for n in names):
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"expect pattern {pattern!r} matches no parameter of {type(model).__name__} "
                             f"(its parameters: {shown})")
        out.append((pattern, C.parse(text)))
    return out


def _check_expected(row: _Row, rule: C.Rule, ctx: _Model, p: torch.Tensor, gen: torch.Generator) -> None:
    """The expectation on each q/k/v part the parameter's role names (DeepNorm scales v alone): a packed one
    is read chunk by chunk where its parts' promises differ."""
    lay = row.layout
    row.expected = rule.name
    parts = lay.parts if lay.parts and len(lay.parts) == lay.chunks else ("",)
    targets = [rule(replace(_site(lay, ctx), part=part)) for part in parts]
    if any(t is None for t in targets):
        row.expected_ok, row.expected_why = None, "no role to read the strategy's promise by (pass roles=)"
        return
    if len(set(targets)) == 1:
        checks = [(targets[0], row.ev, row.fit, "")]
    else:
        chunks = p.detach().t() if lay.transposed else p.detach()
        size = chunks.shape[0] // lay.chunks
        checks = []
        for k, (part, t) in enumerate(zip(parts, targets, strict=True)):
            with one_thread():
                ev = evidence(chunks[k * size:(k + 1) * size], gen)
            checks.append((t, ev, F.fit(ev), f" ({part})"))
    whys = []
    for t, ev, f, part in checks:
        v = _verdict(ev, f, t) if f.family not in ("nonfinite", "none") else F.Verdict(False, math.inf)
        if not v.ok:
            off = f", {v.z:+.1f} standard errors" if math.isfinite(v.z) and v.why == "scale" else ""
            whys.append(f"expected {rule.name}{part} = {t}; found {f.describe()} ({v.why or 'no match'}{off})")
    row.expected_ok = not whys
    if whys:
        row.expected_why = "; ".join(whys)
        row.flags.append(("expected", row.expected_why))


def _best(row: _Row) -> str:
    return row.matches[0].rule if row.matches else ""


def _flag(rows: list[_Row]) -> None:
    for row in rows:
        f, lay = row.fit, row.layout
        if f.family == "nonfinite":
            row.flags.append(("uninitialized", f"{row.ev.nonfinite} NaN/Inf of {row.ev.n} entries"))
        elif f.family == "none":
            row.flags.append(("uninitialized", f"no family explains it: mean {f.mean:.3g}, std {f.std:.3g}, "
                                                f"KS p {f.p_value:.1g} for the closest"))
        elif row.matches and row.matches[0].stored and lay.module not in ("Embedding", "EmbeddingBag"):
            rule = row.matches[0].rule  # best on the stored tensor's fans (an embedding's are a matter of convention)
            if lay.chunks > 1 and not lay.transposed:
                row.flags.append(("packed", f"{rule} on the packed {lay.shape}: fans {lay.stored_fan_in}, "
                                            f"{lay.stored_fan_out}, where each of its {lay.chunks} projections has "
                                            f"{lay.fan_in}, {lay.fan_out}; draw each chunk (role ('qkv', 3))"))
            else:
                row.flags.append(("transposed", f"{rule} on the stored {lay.shape} tensor: fan_in read as "
                                                f"{lay.stored_fan_in} where the layer's is {lay.fan_in}; it is "
                                                "stored (in, out): initialize weight.t() (Role(transposed=True))"))
    _flag_peers(rows)
    _flag_groups(rows)


def _matched(row: _Row) -> set[str]:
    return {m.rule for m in row.matches if not m.stored}


def _flag_peers(rows: list[_Row]) -> None:
    """Left at torch's default while at least two thirds of the (three or more) other parameters of its module
    type and attribute (``Linear.weight``; in the repeated blocks, where the model has them) follow other rules:
    a module the model's own init never reached."""
    peers: dict[tuple[str, str], list[_Row]] = {}
    in_blocks = any(row.layout.block is not None for row in rows)
    for row in rows:
        # In a model of repeated blocks, a stem or a head left at torch's default is a choice many models make
        # (torchvision's ResNet keeps its fc so): the peers are the blocks' parameters.
        if row.layout.block is not None or not in_blocks:
            peers.setdefault((row.layout.module, row.layout.attr), []).append(row)
    for (module, attr), members in peers.items():
        if len(members) < 3:
            continue
        for row in members:
            if _best(row) != "torch_default":
                continue
            others = [r for r in members if r is not row]
            elsewhere = [r for r in others if r.matches and "torch_default" not in _matched(r)]
            if len(others) < 3 or 3 * len(elsewhere) < 2 * len(others):
                continue
            rules = Counter(_best(r) for r in elsewhere).most_common(2)
            shown = ", ".join(f"{name} ({count})" for name, count in rules)
            row.flags.append(("torch_default", f"{row.fit.describe()}, torch's {module} default, where "
                                               f"{len(elsewhere)} of the other {len(others)} {module}.{attr} "
                                               f"follow other rules: {shown}"))


def _common_rule(members: list[_Row]) -> tuple[str, int]:
    """The rule most members match (on the layer's fans), ties to the catalogue's preferred name; and how many."""
    common = Counter(name for r in members for name in _matched(r))
    if not common:
        return "", 0
    top = max(common.values())
    rank = {}
    for r in members:
        for position, m in enumerate(r.matches):
            rank[m.rule] = min(rank.get(m.rule, position), position)
    return min((name for name, n in common.items() if n == top), key=lambda name: (rank[name], name)), top


def _flag_groups(rows: list[_Row]) -> None:
    groups: dict[tuple, list[_Row]] = {}
    for row in rows:
        groups.setdefault((row.group, row.layout.module, row.layout.attr), []).append(row)
    for members in groups.values():
        if len(members) < 3:
            continue
        rule, count = _common_rule(members)
        if not rule:
            continue
        if count == len(members) or count <= len(members) / 2:
            continue
        for row in members:
            if rule not in _matched(row) and not any(flag == "torch_default" for flag, _ in row.flags):
                row.flags.append(("differs", f"{_best(row) or row.fit.describe()} where the other {count} of "
                                             f"{len(members) - 1} in its group are {rule}"))


def _frame(rows: list[_Row]) -> pd.DataFrame:
    records = []
    for row in rows:
        lay, f = row.layout, row.fit
        records.append({
            "group": row.group, "name": lay.name, "tied": ", ".join(lay.names[1:]),
            "module": lay.module, "attr": lay.attr, "shape": "x".join(map(str, lay.shape)) or "()",
            "fan_in": lay.fan_in, "fan_out": lay.fan_out, "chunks": lay.chunks, "transposed": lay.transposed,
            "role": lay.role or "", "block": -1 if lay.block is None else lay.block, "numel": row.ev.n,
            "sampled": row.ev.m, "family": f.family, "scale": f.scale, "n_sigma": f.n_sigma, "mean": f.mean,
            "std": f.std, "ks_p": f.p_value, "fit": f.describe(), "rule": _best(row),
            "also": ", ".join(m.rule for m in row.matches[1:6]),
            "expected": row.expected, "expected_ok": row.expected_ok,
            "flags": ", ".join(sorted({flag for flag, _ in row.flags}, key=FLAGS.index)),
            "evidence": "; ".join(text for _, text in row.flags) or row.expected_why,
        })
    return pd.DataFrame.from_records(records)


def flagged(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of an audit frame with at least one flag."""
    return frame[frame["flags"] != ""]


def grouped(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per group (the same name up to block indices, module type and attribute): members, shapes,
    fit with the members' spread of std, the rule all members share (else the commonest), flags."""
    out = []
    for (group, module, _attr), g in frame.groupby(["group", "module", "attr"], sort=False):
        stds = g["std"].to_numpy(dtype=np.float64)
        spread = float(np.std(stds) / np.mean(stds)) if len(g) > 1 and np.all(np.isfinite(stds)) and \
            np.min(stds) > 0 else 0.0  # a member at a constant has no spread to speak of
        rules = Counter(g["rule"])
        rule, count = rules.most_common(1)[0]
        shapes = sorted(set(g["shape"]))
        flags = sorted({f for fl in g["flags"] for f in fl.split(", ") if f}, key=FLAGS.index)
        evidence = next((f"{n}: {e}" if len(g) > 1 else e for n, e in zip(g["name"], g["evidence"], strict=True)
                         if e), "")
        out.append({"group": group, "n": len(g), "module": module, "shape": shapes[0] if len(shapes) == 1 else
                    f"{len(shapes)} shapes", "fit": g["fit"].iloc[0] + (f" ±{spread:.1%}" if spread >= 0.001 else ""),
                    "rule": rule if count == len(g) else f"{rule} ({count}/{len(g)})",
                    "tied": g["tied"].iloc[0], "flags": ", ".join(flags), "evidence": evidence})
    return pd.DataFrame.from_records(out)


__all__ = ["FLAGS", "audit", "flagged", "group_of", "grouped"]
