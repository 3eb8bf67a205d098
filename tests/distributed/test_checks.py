"""The checks of a sharded init: each statistic against its theory, and each check failing on the bug it
exists for (the naive recipe's identical shards, fans from the local shard, a buffer to_empty left).

Recipes that a user would write are module-level functions here, so forked ranks find them by name.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from initcore import init
from initcore.distributed import (
    NaiveRecipe,
    RankFailure,
    TransformerRecipe,
    check,
    correlation_bound,
    independence,
    ks_2samp,
)
from initcore.distributed.checks import kolmogorov_sf
from initcore.distributed.recipes import meta_transformer, shard
from initcore.models import Transformer, TransformerConfig

TINY = TransformerConfig(vocab_size=256, d_model=64, n_heads=4, d_ff=128, n_layers=2)
SLOW_S = 120.0


# --- statistics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, m, scale", [(2000, 3000, 1.0), (4096, 4096, 1.05), (500, 20000, 1.2)])
def test_ks_2samp_agrees_with_scipy(n, m, scale):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, generator=g), scale * torch.randn(m, generator=g)
    d, p = ks_2samp(a, b)
    reference = stats.ks_2samp(a.numpy(), b.numpy())
    assert d == pytest.approx(reference.statistic, abs=1e-12)
    # the asymptotic tail with Stephens' correction against scipy's exact one: within 10% relative
    # (or 1e-6 absolute, far in the tail)
    assert p == pytest.approx(reference.pvalue, rel=0.1, abs=1e-6)


def test_kolmogorov_tail_at_its_tabulated_critical_values():
    # P(K > 1.358) = 0.05, P(K > 1.628) = 0.01, P(K > 1.949) = 0.001 (Kolmogorov's distribution)
    for x, p in [(1.358, 0.05), (1.628, 0.01), (1.949, 0.001)]:
        assert kolmogorov_sf(x) == pytest.approx(p, rel=0.01)
    assert kolmogorov_sf(0.0) == 1.0


def test_ks_2samp_sees_a_ten_percent_scale_change_in_a_weight_sized_sample():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(128 * 512, generator=g), torch.randn(128 * 512, generator=g)
    assert ks_2samp(a, b)[1] > 1e-4
    assert ks_2samp(a, 1.1 * b)[1] < 1e-6


def test_correlation_bound_is_exceeded_as_often_as_its_alpha_says():
    # sqrt(n) r of independent pairs is ~N(0, 1): the bound at alpha = 0.05 for one test is crossed by
    # 5% of 4000 independent pairs, within 4 binomial sds (sqrt(4000 * 0.05 * 0.95) = 13.8 of 200)
    n, trials, alpha = 256, 4000, 0.05
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((trials, n)), rng.uniform(-1, 1, (trials, n))
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    r = (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))
    crossed = int((np.abs(r) > correlation_bound(n, tests=1, alpha=alpha)).sum())
    assert abs(crossed - alpha * trials) < 4 * math.sqrt(trials * alpha * (1 - alpha)), crossed
    # Bonferroni: 100 tests at family alpha 0.05 each run at 5e-4, a wider bound
    assert correlation_bound(n, tests=100, alpha=alpha) > correlation_bound(n, tests=1, alpha=alpha)


def test_independence_sees_equal_shards_correlated_shards_and_lost_rank():
    g = torch.Generator().manual_seed(0)
    rows = [((0, 0), (32, 64)), ((32, 0), (32, 64))]  # two ranks, Shard(0) of a (64, 64) matrix
    drawn = torch.randn(64, 64, generator=g)
    ok = independence("w", drawn, rows, {})
    assert ok.pairs == 1 and not ok.equal_pairs and not ok.rank_deficient
    assert ok.ok(correlation_bound(ok.shard_elements, tests=1))
    repeated = torch.cat([drawn[:32], drawn[:32]])  # what the naive recipe gives
    bad = independence("w", repeated, rows, {})
    assert bad.equal_pairs == [(0, 1)] and bad.max_abs_r == pytest.approx(1.0) and bad.rank_deficient == [(32, 64)]
    nearly = torch.cat([drawn[:32], drawn[:32] + 0.1 * torch.randn(32, 64, generator=g)])  # shards that correlate
    close = independence("w", nearly, rows, {})
    assert not close.equal_pairs and not close.ok(correlation_bound(close.shard_elements, tests=1))
    replicas = independence("w", drawn, [rows[0], rows[0]], {})  # two ranks holding the same shard: no pair
    assert replicas.pairs == 0 and math.isnan(replicas.max_abs_r)


# --- initcore's recipe passes; the naive one fails where it should -------------------------------------------


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_the_naive_recipe_fails_independence_at_world_sizes_2_and_4(parallel):
    report = check(NaiveRecipe(TINY, parallel=parallel), (1, 2, 4), timeout_s=SLOW_S)
    failed = report.failed("independent")
    assert set(failed["world_size"]) == {2, 4}
    # every sharded weight matrix: q, k, v, o and both feed-forward matrices per block, and the embedding
    assert set(failed["role"]) == {"embedding", "qkv", "attn_out", "mlp_in", "mlp_out"}
    assert any("are equal" in f for f in report.failures) and any("matrix rank" in f for f in report.failures)
    # what a variance check sees instead: every drawn weight's std within 5% of the declared one
    drawn = report.table[report.table["distribution"].notna()]
    assert ((drawn["std"] / drawn["target_std"] - 1).abs() < 0.05).all()
    assert report.table[report.table["world_size"] == 1]["independent"].isna().all()  # one rank: no pairs


def test_the_naive_tensor_parallel_recipe_leaves_biases_nan():
    report = check(NaiveRecipe(TINY, parallel="tp", reset_biases=False), (2,), timeout_s=SLOW_S)
    assert set(report.failed("initialized")["role"]) == {"bias"}
    assert any("NaN after init" in f and "on ranks 0, 1" in f for f in report.failures)


CASES = [  # (strategy, parallel, config changes, world sizes): every family of rule once
    ("gpt2", "tp", {}, (1, 2, 4)),
    ("orthogonal", "fsdp", {}, (2,)),
    ("torch_default", "tp", {}, (2,)),
    ("olmo_mitchell", "fsdp", {}, (4,)),
    ("deepnorm", "tp", {"ffn": "swiglu"}, (2,)),
    ("rezero", "fsdp", {}, (2,)),
    ("kaiming_uniform", "fsdp", {"attention": "torch_mha"}, (2,)),
]


@pytest.mark.parametrize("strategy, parallel, changes, sizes", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_initcore_recipe_passes_every_check(strategy, parallel, changes, sizes):
    cfg = TransformerConfig(**{**TINY.__dict__, **changes})
    report = check(TransformerRecipe(cfg, strategy, parallel), sizes, seed=3, timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    assert not report.notes
    drawn = report.table["distribution"].notna()
    assert drawn.any() and report.table.loc[drawn, "full_rank"].all()


def test_the_distribution_is_the_one_the_strategy_declares():
    report = check(TransformerRecipe(TINY, "deepnorm", "fsdp"), (2,), timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    rows = report.table.set_index("name")
    beta = (8 * TINY.n_layers) ** -0.25  # DeepNorm's gain on attn_out: Xavier normal times beta
    assert rows.loc["blocks.1.attn.o.weight", "target_std"] == pytest.approx(beta * math.sqrt(2 / (2 * TINY.d_model)))
    assert rows.loc["blocks.1.attn.q.weight", "target_std"] == pytest.approx(math.sqrt(2 / (2 * TINY.d_model)))


@dataclasses.dataclass(frozen=True)
class Undeclared(TransformerRecipe):
    """initcore's recipe, as if its strategy declared no distribution (every registered one now does)."""

    def promise(self, *args):
        raise ValueError("strategy declares no targets")


def test_a_strategy_without_declared_targets_is_tested_against_another_one_process_draw():
    recipe = Undeclared(TINY, "mup", "fsdp")
    report = check(recipe, (2,), timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    assert report.table["distribution"].eq(True).sum() >= 12  # two-sample tests ran


def test_initcore_recipe_with_a_replicated_embedding():
    report = check(TransformerRecipe(TINY, "xavier_normal", "tp", embedding="replicated"), (2,), timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    assert report.table.set_index("name").loc["embed.weight", "layout"] == "local"


# --- a user's own recipe -------------------------------------------------------------------------------------


def local_fans_recipe(mesh, generator: torch.Generator) -> nn.Module:
    """A trainer's init that seeds each rank apart (so shards differ) but computes fans from the local
    shard: Xavier's std comes out sqrt((fan_in + fan_out) / (fan_in + fan_out / world)) too large."""
    model = shard(meta_transformer(TINY), mesh, "fsdp")
    model.to_empty(device="cpu")
    seed = int(torch.randint(0, 2**31, (1,), generator=generator)) + mesh.get_local_rank()
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local()
            if local.dim() == 2:
                nn.init.xavier_uniform_(local, generator=torch.Generator().manual_seed(seed))
            else:
                nn.init.zeros_(local) if name.endswith("bias") else nn.init.ones_(local)
    return model


def test_a_users_recipe_with_fans_from_the_local_shard_fails_the_distribution_check():
    report = check(local_fans_recipe, (1, 2), timeout_s=SLOW_S)  # no reference: world size 1 stands in
    failed = report.failed("distribution")
    assert set(failed["world_size"]) == {2}
    assert {"blocks.0.attn.q.weight", "blocks.1.ffn.fc2.weight"} <= set(failed["name"])
    assert report.failed("independent").empty  # its shards are independent: only the scale is wrong
    assert set(report.failed("invariant")["world_size"]) == {2}


class BufferedModel(nn.Module):
    """A user's model with a buffer computed at construction (like rotary frequencies)."""

    ROLES = {"fc.weight": "hidden", "fc.bias": "bias"}

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def buffer_forgotten_recipe(mesh, generator: torch.Generator) -> nn.Module:
    """Build on meta, shard, to_empty, init.apply: the buffer is never recomputed after to_empty."""
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = BufferedModel()
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    return init.apply(model, "xavier_uniform", generator=generator)


def buffer_recomputed_recipe(mesh, generator: torch.Generator) -> nn.Module:
    model = buffer_forgotten_recipe(mesh, generator)
    model.scale.copy_(torch.linspace(0.5, 1.5, 64))
    return model


def test_a_users_recipe_that_forgets_a_buffer_fails_the_initialized_check():
    forgot = check(buffer_forgotten_recipe, (2,), timeout_s=SLOW_S)
    assert list(forgot.failed("initialized")["name"]) == ["scale"]
    fixed = check(buffer_recomputed_recipe, (2,), timeout_s=SLOW_S)
    assert fixed.ok, "\n".join(fixed.failures)


def two_d_recipe(mesh, generator: torch.Generator, naive: bool = False) -> nn.Module:
    """A trainer's 2-D layout on 4 ranks: tensor parallel within pairs, FSDP2 across them. FSDP over a
    column-sharded weight shards it again along dim 0, interleaved (``_StridedShard``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    from initcore.distributed.recipes import tp_plan

    mesh_2d = init_device_mesh("cpu", (2, mesh.size() // 2), mesh_dim_names=("dp", "tp"))
    model = meta_transformer(TINY)
    for block in model.blocks:
        parallelize_module(block, mesh_2d["tp"], tp_plan(model))
        fully_shard(block, mesh=mesh_2d["dp"])
    fully_shard(model, mesh=mesh_2d["dp"])
    model.to_empty(device="cpu")
    if not naive:
        return init.apply(model, "gpt2", generator=generator)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    with torch.no_grad():
        for p in model.parameters():
            nn.init.normal_(p, 0.0, 0.02) if p.dim() == 2 else nn.init.zeros_(p)
    return model


def naive_two_d_recipe(mesh, generator: torch.Generator) -> nn.Module:
    return two_d_recipe(mesh, generator, naive=True)


def tiny_gpt2(generator: torch.Generator) -> nn.Module:
    return init.apply(Transformer.from_config(TINY), "gpt2", generator=generator)


def test_a_two_dimensional_fsdp_and_tp_recipe_is_checked_through_its_interleaved_shards():
    report = check(two_d_recipe, (4,), reference=tiny_gpt2, timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    q = report.table.set_index("name").loc["blocks.0.attn.q.weight"]
    assert q["layout"].startswith("_S(0, 2), S(0)") and q["independent"]  # 4 interleaved pieces compared
    naive = check(naive_two_d_recipe, (4,), reference=tiny_gpt2, timeout_s=SLOW_S)
    assert "blocks.0.attn.q.weight" in set(naive.failed("independent")["name"])


def raises_on_rank_1(mesh, generator: torch.Generator) -> nn.Module:
    if mesh.get_local_rank() == 1:
        raise RuntimeError("out of memory on rank 1 (pretend)")
    return BufferedModel()


def test_a_recipe_that_raises_on_one_rank_names_the_rank():
    with pytest.raises(RankFailure, match=r"(?s)rank 1 of 2 raised.*out of memory on rank 1"):
        check(raises_on_rank_1, (2,), timeout_s=SLOW_S)


def test_bad_input_names_what_is_valid():
    with pytest.raises(ValueError, match="unknown strategy 'xavierr'"):
        TransformerRecipe(TINY, "xavierr")
    with pytest.raises(ValueError, match="unknown parallel 'ddp'; valid: fsdp, hsdp, tp"):
        TransformerRecipe(TINY, "gpt2", "ddp")
    with pytest.raises(ValueError, match="valid for tp: sdpa"):
        TransformerRecipe(TransformerConfig(attention="torch_mha"), "gpt2", "tp")
    with pytest.raises(ValueError, match="world_sizes must be positive integers"):
        check(local_fans_recipe, (0, 2))


# --- a model of yours (FactoryRecipe); placement invariance; HSDP replicas ------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    """A user's model: repeated blocks in a ModuleList and a readout, no roles declared."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net(seed: int) -> nn.Module:
    return Net()


def per_rank_init(model: nn.Module, generator: torch.Generator) -> None:
    """Written to break placement invariance: each rank draws its own shard from its own seed, at the full
    tensor's scale (so the distribution and the shards' independence look right): the full tensor then
    depends on how it is cut, and on the world size."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0  # one process: the check's reference
    seed = int(torch.randint(0, 2**31, (1,), generator=generator)) + rank
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if p.dim() == 2:
                local.normal_(0.0, p.shape[1] ** -0.5, generator=g)
            else:
                local.zero_()


def per_replica_init(model: nn.Module, generator: torch.Generator) -> None:
    """Written to break HSDP: each replica group seeds its own generator (the bug allenai/OLMo-core#319
    fixed) and draws full tensors from it: shards fit together within a group, but the groups differ."""
    import torch.distributed as dist

    from initcore.distributed.recipes import REPLICAS

    replica = dist.get_rank() // (dist.get_world_size() // REPLICAS) if dist.is_initialized() else 0
    seed = int(torch.randint(0, 2**31, (1,), generator=generator)) + replica
    init.apply(model, "kaiming_normal", generator=torch.Generator().manual_seed(seed))


def test_a_factory_recipe_with_a_strategy_is_invariant_to_the_shard_dimension():
    from initcore.distributed import FactoryRecipe

    recipe = FactoryRecipe(net, "kaiming_normal")
    report = check(recipe, (1, 2), variants={"Shard(1)": FactoryRecipe(net, "kaiming_normal", shard_dim=1)},
                   timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    assert report.table["placement"].all() and report.table["identical"].all()
    fc1 = report.table.set_index(["world_size", "name"]).loc[(2, "blocks.0.fc1.weight")]
    assert fc1["layout"] == "S(0) over 2" and fc1["independent"]


def test_placement_fails_on_a_recipe_whose_full_tensor_depends_on_the_cut():
    from initcore.distributed import FactoryRecipe

    report = check(FactoryRecipe(net, per_rank_init), (2,),
                   variants={"Shard(1)": FactoryRecipe(net, per_rank_init, shard_dim=1)}, timeout_s=SLOW_S)
    failed = report.failed("placement")
    assert set(failed["name"]) == {"blocks.0.fc1.weight", "blocks.0.fc2.weight", "blocks.1.fc1.weight",
                                   "blocks.1.fc2.weight", "head.weight"}  # every drawn matrix; zero biases agree
    assert any("not bit-identical under Shard(1)" in f for f in report.failures)
    # what it passes: its shards are independent draws of the right law, and nothing is left uninitialized
    assert report.failed("independent").empty and report.failed("initialized").empty


def test_hsdp_replicas_must_agree():
    from initcore.distributed import FactoryRecipe

    right = check(FactoryRecipe(net, "kaiming_normal", parallel="hsdp"), (4,), timeout_s=SLOW_S)
    assert right.ok, "\n".join(right.failures)
    fc1 = right.table.set_index("name").loc["blocks.0.fc1.weight"]
    assert fc1["layout"] == "R, S(0) over 4" and fc1["replicas"] and fc1["independent"]
    wrong = check(FactoryRecipe(net, per_replica_init, parallel="hsdp"), (4,), timeout_s=SLOW_S)
    failed = wrong.failed("replicas")
    assert {"blocks.0.fc1.weight", "head.weight"} <= set(failed["name"])
    assert any("replicas disagree" in f for f in wrong.failures)
    # within a replica group the shards fit and are independent: only the replica check sees it
    assert wrong.failed("independent").empty


def test_initcore_recipe_is_invariant_to_fsdp_shard_dimension_and_hsdp():
    recipe = TransformerRecipe(TINY, "gpt2", "fsdp")
    report = check(recipe, (2,), variants={"Shard(1)": TransformerRecipe(TINY, "gpt2", "fsdp", shard_dim=1),
                                           "tp": TransformerRecipe(TINY, "gpt2", "tp")}, timeout_s=SLOW_S)
    assert report.ok, "\n".join(report.failures)
    hsdp = check(TransformerRecipe(TINY, "gpt2", "hsdp"), (4,), timeout_s=SLOW_S)
    assert hsdp.ok, "\n".join(hsdp.failures)
    naive = check(NaiveRecipe(TINY, parallel="fsdp"), (2,),
                  variants={"Shard(1)": NaiveRecipe(TINY, parallel="fsdp", shard_dim=1)}, timeout_s=SLOW_S)
    assert "blocks.0.attn.q.weight" in set(naive.failed("placement")["name"])


def test_bad_layouts_name_what_is_valid():
    from initcore.distributed import FactoryRecipe

    with pytest.raises(ValueError, match="unknown parallel 'tp'; valid: fsdp, hsdp"):
        FactoryRecipe(net, "gpt2", parallel="tp")
    with pytest.raises(ValueError, match="unknown shard_dim 2; valid: 0, 1"):
        TransformerRecipe(TINY, "gpt2", shard_dim=2)
    with pytest.raises(ValueError, match="shard_dim 1 is FSDP2's"):
        TransformerRecipe(TINY, "gpt2", "tp", shard_dim=1)
    with pytest.raises(ValueError, match="init must be a strategy's name or a function"):
        FactoryRecipe(net, 3)
