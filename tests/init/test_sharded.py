"""``init.apply`` on DTensor parameters: each rank keeps the slice of the full draw one process makes.

The DTensor cases run on two CPU ranks (``initcore.distributed.group(2)``); the tasks are module-level
functions so the forked ranks find them by name. Every task compares a rank's local shards with the
slice ``distribute_tensor`` cuts from the one-process model of the same seed: equal bit for bit.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from initcore import init
from initcore.distributed import group, world_mesh
from initcore.distributed.recipes import meta_transformer, shard
from initcore.init import sharded
from initcore.init.strategies import config_for
from initcore.models import MLP, Transformer, TransformerConfig, param_roles

# vocab 999 over 2 ranks: uneven shards (500 and 499 rows); d_ff 96 != d_model 64: non-square fans
SMALL = TransformerConfig(vocab_size=999, d_model=64, n_heads=4, d_ff=96, n_layers=2)
STRATEGIES = [n.replace("STD", "0.3") for n in init.names()]
SLOW_S = 120.0


def _sharded_model(config: TransformerConfig, parallel: str, strategy: str | None = None) -> nn.Module:
    model = shard(meta_transformer(config), world_mesh(), parallel)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            (p.to_local() if sharded.is_dtensor(p) else p).fill_(float("nan"))
    if strategy is not None:
        init.apply(model, strategy, generator=torch.Generator().manual_seed(0))
    return model


def _mismatches(model: nn.Module, reference: nn.Module) -> list[str]:
    """Names whose local piece differs from the slice of the one-process tensor it stands for."""
    from torch.distributed.tensor import distribute_tensor

    expected = dict(reference.named_parameters())
    bad = []
    for name, p in model.named_parameters():
        if sharded.is_dtensor(p):
            want = distribute_tensor(expected[name].detach(), p.device_mesh, p.placements, src_data_rank=None)
            got, want = p.to_local(), want.to_local()
        else:
            got, want = p, expected[name]
        if not torch.equal(got.detach(), want.detach()):
            bad.append(name)
    return bad


def every_strategy_matches_one_process(parallel: str) -> dict[str, list[str]]:
    out = {}
    for strategy in STRATEGIES:
        cfg = config_for(strategy, SMALL)
        model = _sharded_model(cfg, parallel, strategy)
        reference = init.apply(Transformer.from_config(cfg), strategy, generator=torch.Generator().manual_seed(0))
        out[strategy] = _mismatches(model, reference)
    return out


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_every_strategy_gives_each_rank_its_slice_of_the_one_process_draw(parallel):
    per_rank = group(2).run(every_strategy_matches_one_process, parallel, timeout_s=SLOW_S)
    for rank, mismatches in enumerate(per_rank):
        assert set(mismatches) == set(STRATEGIES)  # every strategy was run
        wrong = {s: names for s, names in mismatches.items() if names}
        assert not wrong, f"rank {rank}: shards that are not the one-process slice: {wrong}"


def local_shapes_and_fans_source() -> tuple[list[tuple[int, ...]], float]:
    """FSDP shards of the embedding and the ratio of a column-sharded matrix's std to Xavier's full-fan std."""
    model = _sharded_model(SMALL, "tp", "xavier_normal")
    fc1 = model.blocks[0].ffn.fc1.weight  # (96, 64) split by rows: a local (48, 64)
    full_std = (2 / (SMALL.d_model + SMALL.d_ff)) ** 0.5
    return [tuple(model.embed.weight.to_local().shape)], float(fc1.to_local().double().std()) / full_std


def test_fans_come_from_the_full_parameter_not_the_local_shard():
    (shapes0, ratio0), (shapes1, ratio1) = group(2).run(local_shapes_and_fans_source, timeout_s=SLOW_S)
    assert shapes0 == [(500, 64)] and shapes1 == [(499, 64)]  # uneven shards, as torch.chunk cuts them
    # local fans would give std sqrt(2/(48+64)) = 1.13x the full one; 48 x 64 draws estimate a std to
    # 1/sqrt(2 * 3072) = 1.3% (1 sd): 5 sds is 0.064
    for ratio in (ratio0, ratio1):
        assert abs(ratio - 1) < 0.064, ratio


def a_loop_left_by_an_exception_leaves_the_shard_as_it_was() -> tuple[bool, bool]:
    model = _sharded_model(SMALL, "fsdp")
    roled = param_roles(model)
    stand_ins = sharded.full_params(roled)
    first = next(stand_ins)
    first.param.fill_(1.0)  # the caller filled the stand-in, then left the loop without asking for more
    del stand_ins
    untouched = bool(torch.isnan(roled[0].param.to_local()).all())
    next_one = sharded.full_params(roled)
    next(next_one).param.fill_(2.0)
    next(next_one)  # asking for the next parameter keeps the shard of the previous one
    return untouched, bool((roled[0].param.to_local() == 2.0).all())


def test_a_shard_is_written_only_once_the_loop_asks_for_the_next_parameter():
    for untouched, kept in group(2).run(a_loop_left_by_an_exception_leaves_the_shard_as_it_was, timeout_s=SLOW_S):
        assert untouched and kept


def stand_in_bytes_at_most(strategy: str) -> tuple[int, int]:
    """The most bytes held by full-size stand-ins at once while ``init.apply`` runs, and the largest
    parameter's full size in bytes."""
    stand_ins, most = [], [0]
    original = sharded.full_like

    def counted(param, generator=None):
        full = original(param, generator)
        stand_ins.append(weakref.ref(full))
        held = sum(t.untyped_storage().nbytes() for t in (r() for r in stand_ins) if t is not None)
        most[0] = max(most[0], held)
        return full

    sharded.full_like = counted
    try:
        model = _sharded_model(SMALL, "fsdp", strategy)
    finally:
        sharded.full_like = original
    return most[0], max(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("strategy", ["xavier_uniform", "torch_default"])
def test_memory_beyond_the_shards_is_one_full_parameter_at_a_time(strategy):
    # the previous stand-in's memory is freed before the next is made, though a caller's loop variable
    # (a view of it) may live on: the peak is the largest parameter, the embedding (999 x 64 floats)
    for held, largest in group(2).run(stand_in_bytes_at_most, strategy, timeout_s=SLOW_S):
        assert held == largest == 999 * 64 * 4


def torch_default_restores_the_modules_own_parameters() -> tuple[bool, list[str]]:
    model = _sharded_model(SMALL, "fsdp")
    before = {n: id(p) for n, p in model.named_parameters()}
    init.apply(model, "torch_default", generator=torch.Generator().manual_seed(0))
    same_objects = before == {n: id(p) for n, p in model.named_parameters()}
    reference = init.apply(Transformer.from_config(SMALL), "torch_default", generator=torch.Generator().manual_seed(0))
    return same_objects and all(sharded.is_dtensor(p) for p in model.parameters()), _mismatches(model, reference)


def test_torch_default_swaps_full_parameters_in_and_the_sharded_ones_back():
    for same_objects, mismatches in group(2).run(torch_default_restores_the_modules_own_parameters, timeout_s=SLOW_S):
        assert same_objects and mismatches == []


def test_plain_parameters_pass_through_untouched():
    model = MLP(8, 8, 2)
    roled = param_roles(model)
    assert [p for p in sharded.full_params(roled)] == roled  # the very same RoledParams
    modules = list(model.modules())
    assert list(sharded.full_modules(modules)) == modules
    assert not sharded.is_dtensor(model.layers[0].weight)


def mup_classes_and_lrs_of_a_sharded_model(parallel: str) -> tuple[dict, dict]:
    """muP's classes and learning rates of a sharded transformer against a base on the meta device."""
    from initcore.init import mup

    cfg = mup.mup_config(SMALL)
    with torch.device("meta"):
        base = Transformer.from_config(mup.base_config(cfg, 16))
    model = _sharded_model(cfg, parallel)
    kinds = {n: (c.kind, c.mults) for n, c in mup.classify(model, base).items()}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = init.param_groups(model, "mup", lr=1.0, base=base)
    return kinds, {names[id(p)]: g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_mup_reads_the_full_shapes_of_sharded_parameters(parallel):
    # mup's infshape is lost under FSDP (microsoft/mup issue #59); a DTensor's shape is the full one, so
    # every rank classifies as one process does, whatever its shard.
    from initcore.init import mup

    cfg = mup.mup_config(SMALL)
    one = Transformer.from_config(cfg)
    base = Transformer.from_config(mup.base_config(cfg, 16))
    kinds = {n: (c.kind, c.mults) for n, c in mup.classify(one, base).items()}
    names = {id(p): n for n, p in one.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in init.param_groups(one, "mup", lr=1.0, base=base) for p in g["params"]}
    assert {k for k, _ in kinds.values()} >= {"input", "hidden", "vector"}
    for rank_kinds, rank_lrs in group(2).run(mup_classes_and_lrs_of_a_sharded_model, parallel, timeout_s=SLOW_S):
        assert rank_kinds == kinds and rank_lrs == lrs
