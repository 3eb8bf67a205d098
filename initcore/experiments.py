"""The notebook's experiments and ours, as data: which models, sizes, inits and inputs.

bench/, the report and the command line all read these; none defines a configuration of its own.
Each run knows how to build its model and inputs from a seeded CPU generator (weights first, then
inputs), so a run on CUDA starts from exactly the numbers of the same run on the CPU.

Every run type carries its family's facts, so no caller asks which type it has: ``key`` (its name in a
baseline file), ``build(generator)``, ``loss``, ``select`` and ``train`` (how ``initcore.probe.trace``
measures it), ``statistics`` (which statistics a baseline of it holds, by row kind) and
``rounding_amplification()``, and ``promised(...)``: the distribution its strategy declares for one of
its matrices (``initcore.init.promise``). ``Case`` is the run of a model initcore did not write: a name and
a factory ``seed -> (model, inputs)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from initcore import init, theory
from initcore.models import MLP, MLPConfig, Transformer, TransformerConfig

# --- which statistics a baseline holds ---------------------------------------------------------------
# Chosen for a small seed-to-seed spread relative to their value (so a real change stands out) and for
# covering what a regression moves: scale (stds, norms), shape (dead and saturated fractions) and, for
# attention, the logits and how peaked the softmax is. Left out on purpose:
#   act_min, act_max   extremes of one draw: a large, heavy-tailed spread that says little;
#   act_mean           where it is a signed number near 0 (tanh, linear outputs, residual streams) its
#                      spread dwarfs its value; kept where E[phi(h)] > 0 is a real signal (relu, gelu,
#                      silu, sigmoid hidden layers), which a changed bias or activation moves;
#   act_rms, grad_std  ~ act_std and grad_norm / sqrt(n) at init: redundant rows;
#   grad_mean          signed, ~0;
#   nan_count, inf_count  0 in every configuration: the symptom tests assert them instead;
#   attn_entropy, attn_max  attn_entropy_norm carries the same information, normalized.
# Every parameter adds its param_std (and param_mean if it is a vector): see testing.measure.parameter_stats.
MLP_STATISTICS = ("preact_std", "act_std", "dead_frac", "saturated_frac", "grad_norm", "out_grad_norm")
POSITIVE_MEAN_ACTIVATIONS = ("relu", "gelu", "silu", "sigmoid")
PARAM_STATISTICS = ("param_std", "param_mean")
TRANSFORMER_STATISTICS: Mapping[str, tuple[str, ...]] = {
    "attn": ("act_std", "logit_std", "attn_entropy_norm", "grad_norm", "out_grad_norm"),
    "ffn": ("act_std", "grad_norm", "out_grad_norm"),
    "block": ("act_std", "grad_norm", "out_grad_norm"),  # block act_std: the residual stream
}
# Any row of a model initcore did not write ("*": every kind): the same choice, read off what applies
# (a statistic a row does not have is NaN there and no baseline row).
CASE_STATISTICS = ("preact_std", "act_std", "dead_frac", "saturated_frac", "grad_norm", "out_grad_norm",
                   "logit_std", "attn_entropy_norm")


@dataclass(frozen=True)
class MLPRun:
    """An MLP at init fed x ~ N(0, 1) of shape (batch, in_features)."""

    model: MLPConfig
    init: str  # a strategy name, see initcore.init.names()
    batch: int = 64
    gain: float | str | None = None  # None: the strategy's default
    bias: float | None = None  # fill every bias with this constant after the strategy
    loss: str = "mean"  # see initcore.probe.trace
    select = None  # the model's declared rows (initcore.probe.select)
    train = False

    @property
    def statistics(self) -> dict[str, tuple[str, ...]]:
        """Which statistics a baseline of this run holds, by row kind (see MLP_STATISTICS)."""
        extra = ("act_mean",) if self.model.activation in POSITIVE_MEAN_ACTIVATIONS else ()
        return {"linear": MLP_STATISTICS + extra, "param": PARAM_STATISTICS}

    def promised(self, layer: int) -> init.Target:
        """What the strategy declares for ``layers[layer]``'s weight (role "head" for the last, else "hidden")."""
        cfg = self.model
        gain = init.activation_gain(SimpleNamespace(config=cfg)) if self.gain == "auto" else self.gain
        role = "head" if layer == cfg.depth - 1 else "hidden"
        fan_in = cfg.in_features if layer == 0 else cfg.width
        return init.promise(self.init, role, fan_in, cfg.width, n_layers=cfg.depth, gain=gain)

    def sigma_w2(self) -> list[float]:
        """fan_in * Var(w) of every layer: the mean field's weight variance (``theory.mlp_mean_field``)."""
        return [(self.model.in_features if i == 0 else self.model.width) * self.promised(i).variance
                for i in range(self.model.depth)]

    def rounding_amplification(self) -> float:
        """Mean-field factor by which this MLP amplifies a relative perturbation of its hidden signal.

        Per hidden layer a small perturbation grows by sqrt(chi_l) while the signal grows by
        sqrt(q_{l+1} / q_l); their ratio is sqrt(g_l) with g_l = q_l E[phi'(h)^2] / E[phi(h)^2], h ~ N(b, q_l)
        (``theory.mlp_mean_field``), 1 for ReLU (homogeneous), >> 1 for saturated tanh. The product over
        the hidden layers of max(1, sqrt(g_l)).
        """
        cfg = self.model
        bias = self.bias or 0.0
        q = theory.mlp_mean_field(cfg.activation, cfg.depth, self.sigma_w2(), bias)["preact_var"]
        phi, dphi = theory.activation_fn(cfg.activation), theory.activation_derivative(cfg.activation)
        amplification = 1.0
        for layer in range(cfg.depth - 1):
            if not 0 < q[layer] < math.inf:
                continue
            second = theory.gaussian_expectation(lambda h: phi(h) ** 2, bias, q[layer])
            slope = theory.gaussian_expectation(lambda h: dphi(h) ** 2, bias, q[layer])
            if second > 0:
                amplification *= math.sqrt(max(1.0, q[layer] * slope / second))
        return amplification

    def flops(self):
        """``timing.PassFlops`` of one forward and one backward pass."""
        from initcore import timing  # timing builds its cases from these runs

        return timing.mlp_flops(self.model, self.batch)

    @property
    def key(self) -> str:
        m = self.model
        key = f"mlp-{m.activation}-d{m.depth}-w{m.width}-in{m.in_features}-b{self.batch}/{self.init}"
        if self.gain is not None:
            key += f"-gain{self.gain if isinstance(self.gain, str) else f'{self.gain:.4g}'}"
        if self.bias is not None:
            key += f"-bias{self.bias:g}"
        return key + ("" if self.loss == "mean" else f"-loss_{self.loss}")

    def build(self, generator: torch.Generator) -> tuple[nn.Module, torch.Tensor]:
        """Model and input drawn on the CPU from ``generator``: weights first, then x."""
        model = MLP.from_config(self.model)
        init.apply(model, self.init, gain=self.gain, generator=generator)
        if self.bias is not None:
            with torch.no_grad():
                for layer in model.layers:
                    if layer.bias is not None:
                        layer.bias.fill_(self.bias)
        x = torch.randn(self.batch, self.model.in_features, generator=generator)
        return model, x


@dataclass(frozen=True)
class TransformerRun:
    """A transformer stack at init fed uniformly random token ids of shape (batch, seq_len)."""

    model: TransformerConfig
    init: str
    batch: int = 4
    seq_len: int = 32
    options: tuple[tuple[str, float], ...] = field(default=())  # strategy options, as pairs
    # The stack ends in a norm, whose output has mean 0 and mean square ~1 whatever its input: "mean" and
    # "square" give it no gradient, a fixed random projection does (see initcore.probe.trace).
    loss: str = "random"
    select = None  # the model's declared rows: blocks.i.attn, blocks.i.ffn, blocks.i
    # Trace in training mode: dropout active at the model's rate (masks from torch's global generator,
    # which the bench seeds with the run's seed: bench/test_train_mode.py).
    train: bool = False
    # A train run's dropout rate, None for the config's own. A rate given here is part of the key; the
    # config's own is not (nor is it for eval runs, which never apply it), so a changed default moves the
    # statistics of a run that relies on it -- a failure that shows what moved -- rather than its key.
    dropout: float | None = None
    statistics = {**TRANSFORMER_STATISTICS, "param": PARAM_STATISTICS}

    def __post_init__(self) -> None:
        if self.dropout is not None and not (self.train and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout={self.dropout!r}: a rate in [0, 1) for a run with train=True "
                             "(an eval run applies no dropout)")

    def flops(self):
        """``timing.PassFlops`` of one forward and one backward pass."""
        from initcore import timing  # timing builds its cases from these runs

        return timing.transformer_flops(self.model, self.batch, self.seq_len)

    def promised(self, role: str, block: int = 0, part: str = "") -> init.Target:
        """What the strategy declares for one matrix of ``role`` in block ``block`` (``part``: "q", "k" or "v"),
        with the fans this configuration gives it."""
        m = self.model
        d, vocab = m.d_model, m.vocab_size
        fans = {"embedding": (vocab, d), "qkv": (d, d), "attn_out": (d, d), "mlp_in": (d, m.d_ff),
                "mlp_out": (m.d_ff, d), "head": (d, vocab)}
        if role not in fans:
            raise ValueError(f"a transformer's matrices have roles {', '.join(fans)}; got {role!r}")
        chunks = 3 if role == "qkv" and m.attention == "torch_mha" else 1
        return init.promise(self.init, role, *fans[role], n_layers=m.n_layers, block=block, d_model=d, d_ff=m.d_ff,
                            part=part, chunks=chunks, **dict(self.options))

    def rounding_amplification(self) -> float:
        """1: a normalized residual stack does not amplify rounding (measured: float32 and float64 agree
        to < 1e-4 relative in every bench configuration)."""
        return 1.0

    @property
    def key(self) -> str:
        m = self.model
        parts = [f"{m.attention}", f"{m.norm_position}{m.norm}", m.ffn, f"L{m.n_layers}", f"d{m.d_model}",
                 f"h{m.n_heads}", f"ff{m.d_ff}", f"b{self.batch}", f"t{self.seq_len}"]
        if m.causal:
            parts.append("causal")
        if m.residual_alpha != 1.0:
            parts.append(f"alpha{m.residual_alpha:.4g}")
        if m.rezero:
            parts.append("rezero")
        opts = "".join(f"-{k}{v:g}" for k, v in self.options)
        loss = "" if self.loss == "random" else f"-loss_{self.loss}"
        train = ("-train" if self.train else "") + ("" if self.dropout is None else f"-dropout{self.dropout:g}")
        return "transformer-" + "-".join(parts) + f"/{self.init}{opts}{loss}{train}"

    def build(self, generator: torch.Generator) -> tuple[nn.Module, torch.Tensor]:
        cfg = self.model if self.dropout is None else replace(self.model, dropout=self.dropout)
        model = Transformer.from_config(cfg)
        init.apply(model, self.init, generator=generator, **dict(self.options))
        idx = torch.randint(0, self.model.vocab_size, (self.batch, self.seq_len), generator=generator)
        return model, idx


@dataclass(frozen=True)
class Case:
    """A model initcore did not write, as a run: a name and a factory ``seed -> (model, inputs)``.

    The factory builds and initializes the model and draws its inputs from ``seed`` alone (on the CPU:
    ``initcore.testing`` moves both to the test's device), so that a seed gives the same numbers
    every time. ``inputs`` is what ``probe.trace`` takes: a tensor, a tuple, or a dict of keyword
    arguments. ``select``, ``loss`` and ``train`` are ``probe.trace``'s; ``statistics`` the baseline's
    choice by row kind ("*": every kind; default ``CASE_STATISTICS`` and the parameters' own).

    >>> case = Case("tiny", lambda seed: (nn.Linear(3, 2), torch.ones(4, 3)))
    >>> case.key, case.loss
    ('tiny', 'mean')
    """

    key: str
    factory: Callable[[int], tuple[nn.Module, Any]]
    loss: str | Callable | None = "mean"
    select: Any = None
    train: bool = False
    statistics: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"*": CASE_STATISTICS, "param": PARAM_STATISTICS})

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or any(c in self.key for c in "\n,\""):
            raise ValueError(f"a Case's key names it in baseline files: a non-empty string without newlines, "
                             f"commas or quotes; got {self.key!r}")
        if not callable(self.factory):
            raise ValueError(f"Case {self.key!r}: factory must be a callable seed -> (model, inputs), "
                             f"got {type(self.factory).__name__}")

    def __hash__(self) -> int:  # cached per (case, seed, device) like the other runs
        return hash((self.key, id(self.factory)))

    def build(self, generator: torch.Generator) -> tuple[nn.Module, Any]:
        """The factory's model and inputs for the generator's seed (checked: a module, and inputs)."""
        made = self.factory(generator.initial_seed())
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)):
            raise ValueError(f"Case {self.key!r}: the factory must return (model, inputs) with model an "
                             f"nn.Module; got {type(made).__name__}")
        return made

    def rounding_amplification(self) -> float:
        return 1.0  # unknown: the device check holds gradients to the plain float32 tolerance


Run = MLPRun | TransformerRun | Case


def with_init(run: Run, name: str, **changes) -> Run:
    return replace(run, init=name, **changes)


# --- 1. depth and init: the notebook's analyze_initialization_impact --------------------------------
# A 10-layer tanh MLP, 512 wide, batch 64, loss = mean of the output.
DEPTH_MLP = MLPConfig(in_features=512, width=512, depth=10, activation="tanh")
DEPTH_INITS = {
    "too_small": "normal:0.01",  # vanishing: Var grows by 512 * 1e-4 = 0.05 per layer
    "too_large": "normal:1.0",  # exploding pre-activations, tanh saturates
    "xavier": "xavier_uniform",
    "he": "kaiming_uniform",
}
DEPTH_RUNS = {name: MLPRun(DEPTH_MLP, strategy, batch=64) for name, strategy in DEPTH_INITS.items()}

# --- 2. one Xavier layer per shape: the notebook's demonstrate_xavier_theory -----------------------
# Forward ratio Var(y)/Var(x) = 2 fan_in/(fan_in+fan_out), backward Var(dL/dx)/Var(dL/dy) =
# 2 fan_out/(fan_in+fan_out): 1 only for square layers. The backward ratio needs dL/dy with a
# variance, so bench feeds the output a random projection rather than the notebook's sum.
XAVIER_SHAPES = {"square": (100, 100), "bottleneck": (512, 128), "expansion": (128, 512), "large": (1024, 1024)}
XAVIER_RUNS = {
    name: MLPRun(MLPConfig(in_features=fan_in, width=fan_out, depth=1, activation="linear"), "xavier_uniform",
                 batch=1000)
    for name, (fan_in, fan_out) in XAVIER_SHAPES.items()
}

# --- 3. Xavier vs He per activation: the notebook's compare_initialization_with_activations ---------
ACTIVATION_NAMES = ("tanh", "relu", "gelu", "silu")
ACTIVATION_RUNS = {
    (act, strategy): MLPRun(MLPConfig(512, 512, 8, act), strategy, batch=1000)
    for act in ACTIVATION_NAMES for strategy in ("xavier_uniform", "kaiming_uniform")
}
TANH_GAIN = 5 / 3  # torch.nn.init.calculate_gain("tanh")
ACTIVATION_RUNS[("tanh", "xavier_uniform-gain")] = MLPRun(MLPConfig(512, 512, 8, "tanh"), "xavier_uniform",
                                                          batch=1000, gain=TANH_GAIN)

# --- 4. transformer strategies: the notebook's test_transformer_initialization ----------------------
# 12 pre-norm blocks, d_model 512, 8 heads, d_ff 2048. The notebook's batch 32 x seq 128 is FULL; the
# default run uses fewer tokens: per-block statistics average over batch*seq*d_model numbers either way.
NOTEBOOK_TRANSFORMER = TransformerConfig(vocab_size=1000, d_model=512, n_heads=8, d_ff=2048, n_layers=12)
TRANSFORMER_STRATEGIES = ("standard", "scaled", "small_init")
TRANSFORMER_RUNS = {s: TransformerRun(NOTEBOOK_TRANSFORMER, s, batch=2, seq_len=16) for s in TRANSFORMER_STRATEGIES}
TRANSFORMER_RUNS_FULL = {s: TransformerRun(NOTEBOOK_TRANSFORMER, s, batch=32, seq_len=128)
                         for s in TRANSFORMER_STRATEGIES}

# --- 5. failure modes: the notebook's demonstrate_initialization_failures ---------------------------
# A 6-layer, 256-wide MLP, batch 100, loss = mean of the squared output; ReLU unless said otherwise.
FAILURE_MLP = MLPConfig(256, 256, 6, "relu")
FAILURE_RUNS = {
    "vanishing": MLPRun(FAILURE_MLP, "normal:0.001", batch=100, loss="square"),
    "exploding": MLPRun(FAILURE_MLP, "normal:2.0", batch=100, loss="square"),
    # The notebook's dead-ReLU case (std 1.0, bias -1) explodes instead: with std 1.0 at width 256 the
    # pre-activation std is ~16 per unit of input, so a bias of -1 kills nothing (half the units are
    # zero, as always for ReLU). With He weights the pre-activation is N(-0.5, 2) at layer 0, so
    # Phi(-0.5/sqrt(2)) = 64% of units are dead, and more in each following layer.
    "dead_relu": MLPRun(FAILURE_MLP, "kaiming_normal", batch=100, bias=-0.5, loss="square"),
    # The notebook's saturation case (tanh, std 3.0) saturates 97% of the units, but at width 256 that is
    # sigma_w^2 = 256 * 9 = 2304: chi ~ 26 per layer, so its gradients explode too (weight grad norm ~4e4
    # at layer 0, over the "> 10" rule) -- two symptoms at once; it is kept as SATURATION_NOTEBOOK. With
    # std 0.2 (sigma_w^2 ~ 10) ~60% of the hidden units are saturated while chi ~ 1.9 keeps every weight
    # grad norm within [0.6, 3.1] (seeds 0..7): saturation and nothing else.
    "saturation": MLPRun(replace(FAILURE_MLP, activation="tanh"), "normal:0.2", batch=100, loss="square"),
}
SATURATION_NOTEBOOK = MLPRun(replace(FAILURE_MLP, activation="tanh"), "normal:3.0", batch=100, loss="square")
DEAD_RELU_NOTEBOOK = MLPRun(FAILURE_MLP, "normal:1.0", batch=100, bias=-1.0, loss="square")  # explodes instead

# --- 6. the notebook's InitializationUtils report on its SimpleTransformer ---------------------------
SIMPLE_TRANSFORMER = TransformerConfig(vocab_size=1000, d_model=256, n_heads=8, d_ff=1024, n_layers=6,
                                       attention="torch_mha")

# --- 6b. the InitializationUtils strategies of that report (initcore.health, bench/test_health_report.py) ---
# The notebook's two strategies on its SimpleTransformer, on its input: batch 8, sequence 32.
HEALTH_RUNS = {
    "Standard Xavier": TransformerRun(SIMPLE_TRANSFORMER, "notebook_xavier", batch=8, seq_len=32),
    "He + residual scaling": TransformerRun(SIMPLE_TRANSFORMER, "notebook_he_residual", batch=8, seq_len=32),
}

# --- 7. the transformer variants, at a small size ------------------------------------------------------
# 4 blocks, d_model 128, 4 heads, d_ff 512, batch 4 x seq 32, the "standard" strategy: each variant of the
# models' config against the pre-norm LayerNorm stack it departs from.
SMALL_TRANSFORMER = TransformerConfig(vocab_size=1000, d_model=128, n_heads=4, d_ff=512, n_layers=4)
VARIANT_CONFIGS = {
    "prenorm": SMALL_TRANSFORMER,
    "postnorm": replace(SMALL_TRANSFORMER, norm_position="post"),
    "rmsnorm": replace(SMALL_TRANSFORMER, norm="rmsnorm"),
    "gelu": replace(SMALL_TRANSFORMER, ffn="gelu"),
    "swiglu": replace(SMALL_TRANSFORMER, ffn="swiglu"),
    "torch_mha": replace(SMALL_TRANSFORMER, attention="torch_mha"),
    "causal": replace(SMALL_TRANSFORMER, causal=True),
}
VARIANT_RUNS = {name: TransformerRun(cfg, "standard", batch=4, seq_len=32) for name, cfg in VARIANT_CONFIGS.items()}
# DeepNorm's post-norm stack, residual alpha * x + f(x) with alpha = (2L)^(1/4) = 1.68 here: the one baseline in
# which the residual multiplier is not 1, so that an edit moving it (onto the branch) changes the numbers.
VARIANT_RUNS["deepnorm"] = TransformerRun(init.strategies.config_for("deepnorm", SMALL_TRANSFORMER), "deepnorm",
                                          batch=4, seq_len=32)

# --- 8. training mode: the probe with dropout active (bench/test_train_mode.py) ---------------------------
# The pre-norm SMALL_TRANSFORMER traced in train mode, with the config's own dropout (0: a changed default
# moves this run's statistics, where the eval-mode runs cannot see it) and with dropout 0.1 (on the
# attention probabilities and on both residual branches).
TRAIN_RUNS = {
    "default_dropout": TransformerRun(SMALL_TRANSFORMER, "standard", batch=4, seq_len=32, train=True),
    "dropout": TransformerRun(SMALL_TRANSFORMER, "standard", batch=4, seq_len=32, train=True, dropout=0.1),
}


# === modern strategies: depth, attention, the packed in_proj, width (issue 7) ==========================
# The configurations of bench/test_depth_scaling.py, test_attention_init.py, test_mha_trap.py and
# test_width.py; the per-role weight variance each strategy promises (their theory's input) is its own
# declaration, ``run.promised(role, block, part)``.
# Sizes are small enough that the whole set traces in a few seconds on a CPU; ``*_LARGE`` go further.

MODERN_LOSS = "random"  # the stacks end in a norm: only a random projection sends a gradient back


def _modern_run(cfg: TransformerConfig, strategy: str, batch: int, seq_len: int) -> TransformerRun:
    return TransformerRun(init.strategies.config_for(strategy, cfg), strategy, batch=batch, seq_len=seq_len,
                          loss=MODERN_LOSS)


# --- depth: the residual stream of a pre-norm stack, L = 6 .. 48 (96 under -m large) ---------------------
# d_model 64 and 16 sequences of 8 tokens: a 48-block trace takes ~0.3 s on one CPU core.
DEPTH_BASE = TransformerConfig(vocab_size=256, d_model=64, n_heads=4, d_ff=256, n_layers=6)
DEPTHS = (6, 12, 24, 48)
DEPTHS_LARGE = (96,)
DEPTH_STRATEGIES = {  # strategy -> how its stream variance depends on depth L (from its output-projection std)
    "small_normal": "grows",  # unscaled: every block adds the same branch variance, Var_L ~ L
    "gpt2": "bounded",  # 0.02/sqrt(2L): the 2L additions sum to an L-independent total
    "olmo_mitchell": "grows",  # 1/sqrt(2 d (l+1)): block l adds ~1/(l+1), Var_L ~ log L
    "neox_small_init": "shrinks",  # 2/(L sqrt(d)): block adds ~1/L^2, Var_L - Var_0 ~ 1/L
}


def depth_run(strategy: str, n_layers: int) -> TransformerRun:
    return _modern_run(replace(DEPTH_BASE, n_layers=n_layers), strategy, batch=16, seq_len=8)


# not DEPTH_RUNS: section 1's MLP runs have that name
DEPTH_SCALING_RUNS = {(s, n): depth_run(s, n) for s in DEPTH_STRATEGIES for n in DEPTHS}
DEPTH_SCALING_RUNS_LARGE = {(s, n): depth_run(s, n) for s in DEPTH_STRATEGIES for n in DEPTHS_LARGE}

# DeepNorm's post-norm stream is renormalized after every block; what its alpha and beta bound is the
# share of each block's update, Var(f) / (alpha^2 Var(x)) ~ beta^4 / alpha^2 = (8L)^(-1) (2L)^(-1/2).
DEEPNORM_RUNS = {n: depth_run("deepnorm", n) for n in DEPTHS}

# Blocks that are the identity at init: a pre-norm stack (post-norm would still apply its norm).
IDENTITY_STRATEGIES = ("fixup", "rezero")
IDENTITY_RUNS = {s: _modern_run(DEPTH_BASE, s, batch=4, seq_len=8) for s in IDENTITY_STRATEGIES}

# --- attention at init: block 0 of a pre-norm stack, its input LayerNorm'd ------------------------------
ATTENTION_BASE = TransformerConfig(vocab_size=512, d_model=128, n_heads=4, d_ff=256, n_layers=1)
ATTENTION_STRATEGIES = ("xavier_uniform", "kaiming_normal", "small_normal", "gpt2", "olmo_mitchell",
                        "neox_small_init", "deepnorm", "rezero")
SEQ_LENS = (8, 32, 128)
ATTENTION_RUNS = {(s, t): _modern_run(ATTENTION_BASE, s, batch=128 // t, seq_len=t)  # 128 tokens each
                  for s in ATTENTION_STRATEGIES for t in SEQ_LENS}
D_HEADS = (16, 32, 64, 128)  # at d_model 128: 8, 4, 2 and 1 heads
HEAD_RUNS = {(s, dh): _modern_run(replace(ATTENTION_BASE, n_heads=ATTENTION_BASE.d_model // dh), s, batch=4,
                                  seq_len=32)
             for s in ("xavier_uniform", "olmo_mitchell") for dh in D_HEADS}

# --- the nn.MultiheadAttention trap: the packed (3E, E) in_proj ----------------------------------------
MHA_TRAP_BASE = TransformerConfig(vocab_size=256, d_model=128, n_heads=4, d_ff=256, n_layers=2)
MHA_TRAP_RUNS = {  # torch's own init of the packed weight against Xavier per (E, E) projection
    "torch_default-packed": _modern_run(replace(MHA_TRAP_BASE, attention="torch_mha"), "torch_default", 4, 32),
    "xavier_uniform-packed": _modern_run(replace(MHA_TRAP_BASE, attention="torch_mha"), "xavier_uniform", 4, 32),
    "xavier_uniform-separate": _modern_run(MHA_TRAP_BASE, "xavier_uniform", 4, 32),
}


def packing_runs(strategy: str) -> tuple[TransformerRun, TransformerRun]:
    """(separate q, k, v; packed in_proj) runs of one strategy on MHA_TRAP_BASE: every registered strategy
    must give each packed (E, E) chunk the variance of the matching separate projection."""
    return (_modern_run(MHA_TRAP_BASE, strategy, 4, 32),
            _modern_run(replace(MHA_TRAP_BASE, attention="torch_mha"), strategy, 4, 32))


# --- width: a coordinate check over d_model 128 .. 1024 (2048 under -m large) ----------------------------
# Two pre-norm blocks, d_ff = 4 d_model, heads of 32, 16 sequences of 4 tokens (many sequences: a block's
# near-uniform attention adds one vector to all positions of a sequence, and few sequences make the next
# block's logit std noisy), several seeds.
WIDTHS = (128, 256, 512, 1024)
WIDTHS_LARGE = (128, 256, 512, 1024, 2048)
WIDTH_SEEDS = 4
WIDTH_STRATEGIES = {  # strategy -> whether it promises width-independent activations (1/sqrt(fan_in) scale)
    "neox_small_init": True,
    "small_normal": False,  # a fixed std: every Linear's output variance grows with its fan_in
}
WIDTH_STRATEGIES_LARGE = {**WIDTH_STRATEGIES, "xavier_normal": True, "olmo_mitchell": True}


def width_run(strategy: str, width: int) -> TransformerRun:
    cfg = TransformerConfig(vocab_size=256, d_model=width, n_heads=width // 32, d_ff=4 * width, n_layers=2)
    return _modern_run(cfg, strategy, batch=16, seq_len=4)


WIDTH_RUNS = {(s, w): width_run(s, w) for s in WIDTH_STRATEGIES_LARGE for w in WIDTHS_LARGE}


# === real models that initcore did not write (issue 11): bench/test_real_models.py ====================
# Hugging Face transformers' GPT-2 and torchvision's ResNet-18, built and initialized by their own
# libraries, random weights (initcore.zoo; the optional extra "zoo"). The factories import transformers and
# torchvision when called, never when this module is imported.
ZOO_GPT2 = {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 512,
            "n_positions": 256,  # 32768 position-table entries: enough for a KS test to resolve a 10% std change
            "batch": 4, "seq_len": 32}
ZOO_RESNET18 = {"batch": 4, "image_size": 32, "num_classes": 1000}  # 32 px: layer4 works on 1 x 1 maps


def _zoo_gpt2(seed: int) -> tuple[nn.Module, Any]:
    from initcore import zoo

    return zoo.gpt2(seed, **ZOO_GPT2)


def _zoo_gpt2_initcore(seed: int) -> tuple[nn.Module, Any]:
    """The same GPT-2, its weights drawn anew by initcore's ``gpt2`` strategy (``zoo.GPT2_ROLES``)."""
    from initcore import zoo

    model, inputs = zoo.gpt2(seed, **ZOO_GPT2)
    init.apply(model, "gpt2", roles=zoo.GPT2_ROLES, generator=torch.Generator().manual_seed(seed))
    return model, inputs


def _zoo_resnet18(seed: int) -> tuple[nn.Module, Any]:
    from initcore import zoo

    return zoo.resnet18(seed, **ZOO_RESNET18)


_GPT2_KEY = "hf-gpt2-L{n_layer}-d{n_embd}-h{n_head}-v{vocab_size}-b{batch}-t{seq_len}".format(**ZOO_GPT2)
ZOO_RUNS = {
    # The stack ends in ln_f and the tied lm_head: a fixed random projection of the logits is the loss, as
    # for initcore's transformers. Rows: every module owning parameters, and the attention of each block.
    "gpt2": Case(_GPT2_KEY, _zoo_gpt2, loss="random"),
    "gpt2_initcore": Case(_GPT2_KEY + "/initcore-gpt2", _zoo_gpt2_initcore, loss="random"),
    # Traced in training mode, as it trains: BatchNorm normalizes by the batch's statistics, which is what
    # torchvision's BatchNorm init (weight 1, bias 0) is made for.
    "resnet18": Case("tv-resnet18-c{num_classes}-b{batch}-s{image_size}".format(**ZOO_RESNET18), _zoo_resnet18,
                     loss="random", train=True),
}
