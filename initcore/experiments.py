"""The notebook's experiments and ours, as data: which models, sizes, inits and inputs.

bench/, the report and the command line all read these; none defines a configuration of its own.
Each run knows how to build its model and inputs from a seeded CPU generator (weights first, then
inputs), so a run on CUDA starts from exactly the numbers of the same run on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from initcore import init
from initcore.models import MLP, MLPConfig, Transformer, TransformerConfig


@dataclass(frozen=True)
class MLPRun:
    """An MLP at init fed x ~ N(0, 1) of shape (batch, in_features)."""

    model: MLPConfig
    init: str  # a strategy name, see initcore.init.names()
    batch: int = 64
    gain: float | str | None = None  # None: the strategy's default
    bias: float | None = None  # fill every bias with this constant after the strategy
    loss: str = "mean"  # see initcore.probe.trace

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
    loss: str = "mean"

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
        return "transformer-" + "-".join(parts) + f"/{self.init}{opts}"

    def build(self, generator: torch.Generator) -> tuple[nn.Module, torch.Tensor]:
        model = Transformer.from_config(self.model)
        init.apply(model, self.init, generator=generator, **dict(self.options))
        idx = torch.randint(0, self.model.vocab_size, (self.batch, self.seq_len), generator=generator)
        return model, idx


Run = MLPRun | TransformerRun


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
    "saturation": MLPRun(replace(FAILURE_MLP, activation="tanh"), "normal:3.0", batch=100, loss="square"),
}

# --- 6. the notebook's InitializationUtils report on its SimpleTransformer ---------------------------
SIMPLE_TRANSFORMER = TransformerConfig(vocab_size=1000, d_model=256, n_heads=8, d_ff=1024, n_layers=6,
                                       attention="torch_mha")

# --- 6b. the InitializationUtils strategies of that report (initcore.health, bench/test_health_report.py) ---
# The notebook's two strategies on its SimpleTransformer, on its input: batch 8, sequence 32.
HEALTH_RUNS = {
    "Standard Xavier": TransformerRun(SIMPLE_TRANSFORMER, "notebook_xavier", batch=8, seq_len=32),
    "He + residual scaling": TransformerRun(SIMPLE_TRANSFORMER, "notebook_he_residual", batch=8, seq_len=32),
}
