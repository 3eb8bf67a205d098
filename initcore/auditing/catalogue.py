r"""The rules an audit can name: one catalogue of what each init draws, for one parameter.

A :class:`Rule` maps a parameter (its :class:`~initcore.auditing.layout.Layout` and the model's depth L) to the
``Target`` it promises (``initcore.init.targets``: family and scale), or None where it does not apply. The
catalogue, in the order the audit prefers a name when several fit:

- ``torch_default``: what the module's own ``reset_parameters`` draws, by module type: Linear, Bilinear and
  Conv weights and biases U(±1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))``); Embedding N(0, 1); norm
  weights 1, biases 0; nn.MultiheadAttention's packed Xavier uniform over (3E, E), its biases 0; RNNs
  U(±1/sqrt(hidden_size)) everywhere;
- ``zeros``, ``ones``;
- the formulas of ``torch.nn.init`` on the fans as the module uses them: xavier uniform and normal, kaiming
  uniform and normal on fan_in or fan_out, lecun (kaiming with gain 1 on fan_in), orthogonal, each with the
  gains of ``calculate_gain`` (linear 1, relu sqrt 2, tanh 5/3, selu 3/4, leaky_relu) and a = sqrt 5's
  sqrt(1/3);
- N(0, sigma^2) and its cut at 2 and 3 sigma for the constant sigmas in use (``STDS``: 0.02 of GPT-2, BERT,
  Llama; 1 of nn.Embedding; ...), the depth-scaled sigma/sqrt(2L), and the per-layer 1/sqrt(2 d (l+1));
- every strategy of initcore's registry, through its declared targets (``init.promise``): the audit and the
  strategies share one table of promises.

:func:`parse` reads an expectation (``"normal(0.02)"``, ``"normal(0.02/sqrt(2L))"``, ``"xavier_uniform"``,
``"ones"``, ``"torch_default"``, a strategy name) into a Rule.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from initcore.auditing.layout import Layout
from initcore.init import strategies
from initcore.init import targets as T
from initcore.init.targets import Target

GAINS = {"linear": 1.0, "relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "selu": 0.75,
         "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)), "a=sqrt(5)": math.sqrt(1.0 / 3.0)}
STDS = (1.0, 0.1, 0.05, 0.02, 0.01, 0.006, 0.002, 0.001, 1e-6)  # constant stds of public models' inits
DEPTH_STDS = (0.02, 0.01, 0.006)  # sigma of sigma/sqrt(2L) (GPT-2's c_proj, Megatron's output layers)
CUTS = (2.0, 3.0)  # truncated normals' cuts in sigmas (torchtitan, OLMo: 3; timm's relative variants: 2)


@dataclass(frozen=True)
class Site:
    """The facts a rule reads: fans (of one packed chunk), depth, block, role, and the module's own."""

    layout: Layout
    fan_in: int
    fan_out: int
    n_layers: int
    d_model: int | None = None  # the residual width, where the model's config states one (strategies read it)
    d_ff: int | None = None
    part: str = ""  # "q", "k" or "v" of an attention projection, where its module names it


@dataclass(frozen=True)
class Rule:
    name: str
    target: Callable[[Site], Target | None]
    source: str  # "torch", "formula", "strategy", "expected"
    fan_sensitive: bool = False  # depends on which fan is which, or on fan_out: read on the stored tensor too
    note: str = field(default="", compare=False)

    def __call__(self, site: Site) -> Target | None:
        return self.target(site)


# --- torch's per-module defaults -----------------------------------------------------------------------------

def torch_default(site: Site) -> Target | None:
    """What the owning module's own ``reset_parameters`` draws: ``init.targets.module_default``, the one table
    of torch's per-module defaults (the registry's ``torch_default`` strategy reads it too)."""
    lay = site.layout
    return T.module_default(lay.module, lay.attr, lay.shape, lay.weight_fan_in, lay.hidden_size)


# --- formulas of torch.nn.init --------------------------------------------------------------------------------


def _matrix(fn: Callable[[Site], Target]) -> Callable[[Site], Target | None]:
    return lambda s: fn(s) if s.layout.kind == "matrix" and s.fan_in > 0 and s.fan_out > 0 else None


def _gain_suffix(gain: str, default: str) -> str:
    return "" if gain == default else gain


def _formula_rules() -> list[Rule]:
    rules: list[Rule] = []
    for gain_name, g in GAINS.items():
        sfx = _gain_suffix(gain_name, "linear")
        rules.append(Rule(f"xavier_uniform({sfx})" if sfx else "xavier_uniform",
                          _matrix(lambda s, g=g: T.xavier_uniform(s.fan_in, s.fan_out, g)), "formula", True))
        rules.append(Rule(f"xavier_normal({sfx})" if sfx else "xavier_normal",
                          _matrix(lambda s, g=g: T.xavier_normal(s.fan_in, s.fan_out, g)), "formula", True))
    for gain_name, g in GAINS.items():
        for mode in ("fan_in", "fan_out"):
            args = ", ".join(a for a in ("" if mode == "fan_in" else mode, _gain_suffix(gain_name, "relu")) if a)
            for fam, make in (("uniform", T.fan_in_uniform), ("normal", T.fan_in_normal)):
                if gain_name == "linear" and mode == "fan_in":
                    name = f"lecun_{fam}"
                else:
                    name = f"kaiming_{fam}({args})" if args else f"kaiming_{fam}"
                rules.append(Rule(name, _matrix(lambda s, g=g, mode=mode, make=make: make(
                    s.fan_in if mode == "fan_in" else s.fan_out, g)), "formula", True))
    for gain_name, g in GAINS.items():
        name = "orthogonal" if gain_name == "linear" else f"orthogonal({gain_name})"
        rules.append(Rule(name, _matrix(lambda s, g=g: T.orthogonal(g, s.fan_in, s.fan_out)), "formula", True))
    for std in STDS:
        rules.append(Rule(f"normal({std:g})", lambda s, std=std: T.normal(std), "formula"))
        for cut in CUTS:
            rules.append(Rule(f"trunc_normal({std:g}, {cut:g}σ)", lambda s, std=std, cut=cut: T.trunc_normal(std, cut),
                              "formula"))
    for std in DEPTH_STDS:
        rules.append(Rule(f"normal({std:g}/sqrt(2L))", lambda s, std=std: T.normal(std / math.sqrt(2 * s.n_layers)),
                          "formula"))
    per_layer = _matrix(lambda s: None if s.layout.block is None else
                        1.0 / math.sqrt(2 * s.fan_in * (s.layout.block + 1)))
    rules.append(Rule("normal(1/sqrt(2*fan_in*(l+1)))", lambda s: None if per_layer(s) is None else
                      T.normal(per_layer(s)), "formula", True))
    rules.append(Rule("trunc_normal(1/sqrt(2*fan_in*(l+1)), 3σ)", lambda s: None if per_layer(s) is None else
                      T.trunc_normal(per_layer(s), 3.0), "formula", True))
    return rules


# --- initcore's registry ---------------------------------------------------------------------------------------


def _strategy_target(name: str) -> Callable[[Site], Target | None]:
    def target(s: Site) -> Target | None:
        lay = s.layout
        if lay.role is None or lay.kind != "matrix":  # vectors: the registry's defaults, zeros and ones above
            return None
        try:
            return strategies.promise(name, lay.role, max(s.fan_in, 1), max(s.fan_out, 1), n_layers=s.n_layers,
                                      block=lay.block, chunks=lay.chunks, d_model=s.d_model, d_ff=s.d_ff, part=s.part)
        except (ValueError, KeyError, TypeError, ZeroDivisionError):  # options it needs, a role it refuses
            return None
    return target


def _strategy_rules() -> list[Rule]:
    out = []
    for name in strategies.names():
        if ":" in name or name == "torch_default":  # normal:STD is the formulas' normal(sigma)
            continue
        out.append(Rule(name, _strategy_target(name), "strategy", True))
    return out


def catalogue() -> list[Rule]:
    """Every rule, in the order the audit prefers a name when several fit (see the module docstring)."""
    return [Rule("torch_default", torch_default, "torch"),
            Rule("zeros", lambda s: T.constant(0.0), "formula"), Rule("ones", lambda s: T.constant(1.0), "formula"),
            *_formula_rules(), *_strategy_rules()]


# --- expectations ---------------------------------------------------------------------------------------------

# "2L" as written in papers and the README: a number right before a name is a product (not "1e-6"'s exponent).
_IMPLICIT_PRODUCT = re.compile(r"(?<![\w.])(\d+(?:\.\d*)?)(?=[A-Za-z_])(?![eE][+-]?\d)")
_FUNCS = {"sqrt": math.sqrt, "log": math.log, "exp": math.exp}
_VARS = ("L", "l", "fan_in", "fan_out", "d")
_RULE_ARGS = {
    "normal": ("std",), "uniform": ("bound",), "constant": ("value",), "trunc_normal": ("std", "cut"),
    "xavier_uniform": ("gain",), "xavier_normal": ("gain",), "kaiming_uniform": ("gain", "mode"),
    "kaiming_normal": ("gain", "mode"), "lecun_normal": ("gain",), "lecun_uniform": ("gain",),
    "orthogonal": ("gain",), "zeros": (), "ones": (), "torch_default": (),
}


def _number(node: ast.AST, text: str) -> Callable[[Site], float]:
    """A compiled arithmetic expression of numbers, L (depth), l (block), fan_in, fan_out, d (= fan_in)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        v = float(node.value)
        return lambda s: v
    if isinstance(node, ast.Name) and node.id in _VARS:
        name = node.id

        def var(s: Site) -> float:
            if name == "L":
                return float(s.n_layers)
            if name == "l":
                if s.layout.block is None:
                    raise ValueError(f"rule {text!r} uses l (the block index) on {s.layout.name}, which is in no block")
                return float(s.layout.block)
            return float(s.fan_out if name == "fan_out" else s.fan_in)
        return var
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
        a, b, op = _number(node.left, text), _number(node.right, text), type(node.op)
        ops = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y, ast.Mult: lambda x, y: x * y,
               ast.Div: lambda x, y: x / y, ast.Pow: lambda x, y: x**y}
        f = ops[op]
        return lambda s: f(a(s), b(s))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        a = _number(node.operand, text)
        return lambda s: -a(s)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and \
            len(node.args) == 1 and not node.keywords:
        a, f = _number(node.args[0], text), _FUNCS[node.func.id]
        return lambda s: f(a(s))
    raise ValueError(f"rule {text!r}: {ast.unparse(node)!r} is not a number; write numbers, + - * / **, sqrt(), "
                     f"and the names {', '.join(_VARS)} (L: depth, l: block index)")


def _valid() -> str:
    return ", ".join([*(f"{k}({', '.join(v)})" if v else k for k, v in _RULE_ARGS.items()), "or a strategy: "
                      + ", ".join(n for n in strategies.names() if ":" not in n)])


def parse(text: str) -> Rule:
    """The rule an expectation names: ``"normal(0.02/sqrt(2L))"``, ``"xavier_uniform(gain=sqrt(2))"``,
    ``"kaiming_normal(mode='fan_out')"``, ``"ones"``, ``"torch_default"`` or a strategy name (``"gpt2"``,
    its targets by each parameter's role).

    Raises:
        ValueError: a rule that does not parse, naming the valid ones.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a rule is a non-empty string; valid: {_valid()}")
    text = text.strip()
    if text in strategies.names() or text.startswith("normal:"):
        try:
            strategies.get(text)
        except ValueError as e:
            raise ValueError(f"rule {text!r}: {e}") from None
        formula = _expected_formula(text, {}, "fan_in") if text in _RULE_ARGS else None
        return Rule(text, _expected_strategy(text, formula), "expected", True)
    try:
        tree = ast.parse(_IMPLICIT_PRODUCT.sub(r"\1*", text.replace("σ", "")), mode="eval").body
    except SyntaxError:
        raise ValueError(f"rule {text!r} does not parse; valid: {_valid()}") from None
    if isinstance(tree, ast.Name):
        name, args, kwargs = tree.id, [], {}
    elif isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name):
        name, args, kwargs = tree.func.id, tree.args, {k.arg: k.value for k in tree.keywords}
    else:
        raise ValueError(f"rule {text!r} does not parse; valid: {_valid()}")
    if name not in _RULE_ARGS:
        close = difflib.get_close_matches(name, list(dict.fromkeys([*_RULE_ARGS, *strategies.names()])), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"rule {text!r}: unknown rule {name!r}{hint}; valid: {_valid()}")
    names = _RULE_ARGS[name]
    args, kwargs = _named_gains_and_modes(args, kwargs)
    if len(args) > len(names) or set(kwargs) - set(names) or None in kwargs:
        raise ValueError(f"rule {text!r}: {name} takes {', '.join(names) or 'no arguments'}")
    given = dict(zip(names, args, strict=False)) | kwargs
    mode = "fan_in"
    if "mode" in given:
        node = given.pop("mode")
        mode = node.value if isinstance(node, ast.Constant) else getattr(node, "id", None)
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"rule {text!r}: mode is 'fan_in' or 'fan_out'")
    nums = {k: _number(v, text) for k, v in given.items()}
    if name in ("normal", "uniform", "constant", "trunc_normal") and not ({"std", "bound", "value"} & set(nums)):
        raise ValueError(f"rule {text!r}: {name} needs its {names[0]}, e.g. {name}(0.02)")
    return Rule(text, _expected_formula(name, nums, mode), "expected", True)


def _named_gains_and_modes(args: list[ast.AST], kwargs: dict[str, ast.AST]) -> tuple[list, dict]:
    """The catalogue's own spellings, so that a rule the audit names can be expected as it is printed: a mode
    named bare (``kaiming_normal(fan_out)``), a gain by its nonlinearity (``xavier_uniform(relu)``,
    ``kaiming_uniform(a=sqrt(5))``: torch's leaky_relu gain sqrt(2/(1+a^2)))."""
    rest = []
    for node in args:
        if isinstance(node, ast.Name) and node.id in ("fan_in", "fan_out") and "mode" not in kwargs:
            kwargs = {**kwargs, "mode": ast.Constant(node.id)}
        elif isinstance(node, ast.Name) and node.id in GAINS and "gain" not in kwargs:
            kwargs = {**kwargs, "gain": ast.Constant(GAINS[node.id])}
        else:
            rest.append(node)
    if "a" in kwargs and "gain" not in kwargs:
        a = kwargs.pop("a")
        kwargs = {**kwargs, "gain": ast.BinOp(ast.Constant(2.0), ast.Div(), ast.BinOp(
            ast.Constant(1.0), ast.Add(), ast.BinOp(a, ast.Pow(), ast.Constant(2.0))))}
        kwargs["gain"] = ast.Call(ast.Name("sqrt"), [kwargs["gain"]], [])
    return rest, kwargs


def _expected_formula(name: str, nums: dict[str, Callable[[Site], float]],
                      mode: str) -> Callable[[Site], Target | None]:
    def get(key: str, s: Site, default: float) -> float:
        return nums[key](s) if key in nums else default

    def target(s: Site) -> Target | None:
        lay = s.layout
        needs_matrix = name not in ("normal", "uniform", "constant", "trunc_normal", "zeros", "ones", "torch_default")
        if needs_matrix and lay.kind != "matrix":
            raise ValueError(f"rule {name} needs a matrix; {lay.name} has shape {tuple(lay.shape)}")
        fan = s.fan_in if mode == "fan_in" else s.fan_out
        if name == "normal":
            return T.normal(get("std", s, 0.0))
        if name == "trunc_normal":
            return T.trunc_normal(get("std", s, 0.0), get("cut", s, 2.0))
        if name == "uniform":
            return T.uniform(get("bound", s, 0.0))
        if name == "constant":
            return T.constant(get("value", s, 0.0))
        if name in ("zeros", "ones"):
            return T.constant(0.0 if name == "zeros" else 1.0)
        if name == "torch_default":
            return torch_default(s)
        if name == "xavier_uniform":
            return T.xavier_uniform(s.fan_in, s.fan_out, get("gain", s, 1.0))
        if name == "xavier_normal":
            return T.xavier_normal(s.fan_in, s.fan_out, get("gain", s, 1.0))
        if name in ("kaiming_uniform", "kaiming_normal"):
            make = T.fan_in_uniform if name.endswith("uniform") else T.fan_in_normal
            return make(fan, get("gain", s, math.sqrt(2.0)))
        if name in ("lecun_normal", "lecun_uniform"):
            make = T.fan_in_uniform if name.endswith("uniform") else T.fan_in_normal
            return make(s.fan_in, get("gain", s, 1.0))
        return T.orthogonal(get("gain", s, 1.0), s.fan_in, s.fan_out)
    return target


def _expected_strategy(name: str, formula: Callable[[Site], Target | None] | None) -> Callable[[Site], Target | None]:
    """A strategy's promise by role (what ``init.apply(model, name)`` draws: biases 0, norms 1); where it is
    also a formula of torch.nn.init (xavier_uniform, ...), that formula for a matrix without a role."""
    def target(s: Site) -> Target | None:
        lay = s.layout
        if name == "torch_default":
            return torch_default(s)
        if lay.role is None:
            if formula is not None and lay.kind == "matrix":
                return formula(s)
            return None  # no role, no promise: the audit says the expectation could not be read for it
        return strategies.promise(name, lay.role, max(s.fan_in, 1), max(s.fan_out, 1), n_layers=s.n_layers,
                                  block=lay.block, chunks=lay.chunks, d_model=s.d_model, d_ff=s.d_ff, part=s.part)
    return target


__all__ = ["CUTS", "DEPTH_STDS", "GAINS", "STDS", "Rule", "Site", "catalogue", "parse", "torch_default"]
