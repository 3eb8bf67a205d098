"""The mup package and initcore convert the same model neither wrote, Hugging Face's GPT-2, and train it alike.

mup's recipe: the readout a ``MuReadout`` (Table 8 of Tensor Programs V: its weight stored width_mult times
Table 3's, its input divided by width_mult in the forward, its Adam learning rate not divided),
``set_base_shapes`` with a base and a delta model, ``MuAdam``, the attention logits scaled 1/d_head (set on
each attention module by hand, as mup's examples do). initcore's: ``init.mup.scale_attention``,
``init.apply(model, "mup", base=...)``, ``init.param_groups(model, "mup", base=...)`` and torch's Adam
(Table 3: the readout N(0, base/width^2), its learning rate lr / width_mult). The weights are initcore's
draws, copied into mup's model in its form: the readout at SP scale (x sqrt(width_mult)), which
``set_base_shapes``' rescaling takes to Table 8's (x width_mult in all). Then both take Adam steps on one
batch and their logits and parameters are compared after every step (tests/init/test_mup.py does the
same on initcore's own MLP). Under Adam the two forms differ in one thing, eps: Table 8's readout gradients
are width_mult times smaller, so the same eps weighs width_mult times more. With the readout group's eps
divided by width_mult they train bit for bit alike; with MuAdam's own eps the readout's first step differs
by exactly that (a third test).

Tied embeddings: mup's ``MuSharedReadout`` rescales the shared table by sqrt(width_mult) in
``set_base_shapes`` (microsoft/mup issue #55), so the embedding starts sqrt(width_mult) times larger than
its init says; initcore keeps the table and multiplies the readout's output by sqrt(base)/width (mup's
1/width_mult with ``output_mult`` 1/sqrt(base)). The test shows that rescaling is the whole disagreement:
mup's table is exactly sqrt(width_mult) times initcore's, and with it undone the two train alike.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from initcore import init, zoo
from initcore.init import mup as mup_init

# n_embd of mup's base and delta models and of the model trained. Powers of two chosen so that every factor
# between the two forms is one, whose products round exactly: width_mult M = 4 (sqrt 2), sqrt(BASE) = 8 (the
# tied readout's sqrt(b)/d = 1/32), d_head = 64 at WIDTH (GPT-2's 1/sqrt(d_head) = 1/8, muP's 1/64)
BASE, DELTA, WIDTH = 64, 128, 256
M = WIDTH / BASE
VOCAB, SEQ, BATCH, N_HEAD, N_LAYER = 64, 8, 4, 4, 2
LR, STEPS = 0.01, 3
# Float tolerance: with those powers of two the two forms run the same roundings, scaled. Measured over these
# 3 steps (eps aligned; tied, with the rescaling undone): no difference at all, logits and parameters bit for
# bit. rtol 1e-5 as tests/init/test_mup.py (float32's 6e-8 per operation, over a few hundred operations);
# atol 1e-7 for entries near 0 (the logits are O(1e-1), the weights O(1e-2) to O(1)).
RTOL, ATOL = 1e-5, 1e-7
EPS = 1e-8  # torch's Adam eps, which MuAdam keeps


def _the_mup_package():
    """The mup package: make installs it (scripts/install_zoo.py); elsewhere the test skips, but not in CI
    (INITCORE_REQUIRE_ZOO), where a missing peer fails it."""
    if os.environ.get("INITCORE_REQUIRE_ZOO"):
        import mup
        return mup
    return pytest.importorskip("mup", reason="the mup package is not installed: python scripts/install_zoo.py")


def _transformers():
    if os.environ.get("INITCORE_REQUIRE_ZOO"):
        import transformers
        return transformers
    return pytest.importorskip("transformers", reason="Hugging Face's transformers is not installed (extra 'zoo')")


def _gpt2(width: int, tied: bool, meta: bool = False):
    transformers = _transformers()
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=width, n_layer=N_LAYER, n_head=N_HEAD,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
                                  bos_token_id=0, eos_token_id=0)
    if meta:  # shapes only: the base and delta models
        with torch.device("meta"):
            return transformers.GPT2LMHeadModel(cfg)
    return transformers.GPT2LMHeadModel(cfg)


def _batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return ({"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)},
            torch.randint(0, VOCAB, (BATCH, SEQ), generator=g))


def _ours(tied: bool, inputs) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _gpt2(WIDTH, tied)
    mup_init.scale_attention(model)
    base = _gpt2(BASE, tied, meta=True)
    init.apply(model, "mup", base=base, inputs=inputs, roles=zoo.GPT2_ROLES, generator=torch.Generator().manual_seed(0))
    groups = init.param_groups(model, "mup", lr=LR, base=base, inputs=inputs, roles=zoo.GPT2_ROLES)
    return model, torch.optim.Adam(groups)


def _mup_readout(model, tied: bool):
    """mup's readout in place of GPT-2's lm_head: MuReadout, or MuSharedReadout on the embedding table with
    output_mult 1/sqrt(base) (see the module docstring)."""
    import mup

    if tied:
        model.lm_head = mup.MuSharedReadout(model.transformer.wte.weight, bias=False, output_mult=1 / math.sqrt(BASE))
    else:
        model.lm_head = mup.MuReadout(model.config.n_embd, VOCAB, bias=False, readout_zero_init=False,
                                      device=model.transformer.wte.weight.device)
    return model


def _theirs(ours, tied: bool, rescale: bool = True, readout_eps: float | None = None):
    """mup's recipe on GPT-2 holding initcore's draws, its readout at SP scale N(0, 1/width) before
    set_base_shapes; ``readout_eps``: Adam's eps of the readout's own group (None: MuAdam's, as a user runs it)."""
    mup = _the_mup_package()
    model = _mup_readout(_gpt2(WIDTH, tied), tied)
    for module in model.modules():
        if hasattr(module, "scaling") and hasattr(module, "head_dim"):
            module.scaling = 1.0 / module.head_dim  # muP's 1/d_head, where GPT-2 has 1/sqrt(d_head)
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(mine[name] * math.sqrt(M) if name == "lm_head.weight" else mine[name])
    mup.set_base_shapes(model, _mup_readout(_gpt2(BASE, tied, meta=True), tied), rescale_params=rescale,
                        delta=_mup_readout(_gpt2(DELTA, tied, meta=True), tied))
    if readout_eps is None:
        return model, mup.MuAdam(model.parameters(), lr=LR)
    rest = [p for n, p in model.named_parameters() if n != "lm_head.weight"]
    return model, mup.MuAdam([{"params": rest}, {"params": [model.lm_head.weight], "eps": readout_eps}], lr=LR)


def _train(model, opt, inputs, targets) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The logits before each of STEPS Adam steps and after the last, and the parameters after each step."""
    logits, params = [], []
    for _ in range(STEPS):
        out = model(**inputs).logits
        logits.append(out.detach().clone())
        opt.zero_grad()
        F.cross_entropy(out.reshape(-1, VOCAB), targets.reshape(-1)).backward()
        opt.step()
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    with torch.no_grad():
        logits.append(model(**inputs).logits.clone())
    return logits, params


def _assert_same_training(ours, ours_opt, theirs, theirs_opt, inputs, targets) -> None:
    our_logits, our_params = _train(ours, ours_opt, inputs, targets)
    their_logits, their_params = _train(theirs, theirs_opt, inputs, targets)
    for t, (a, b) in enumerate(zip(our_logits, their_logits, strict=True)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, t=t: f"logits at step {t}: {m}")
    for t, (a, b) in enumerate(zip(our_params, their_params, strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            theirs_as_ours = b[name] / M if name == "lm_head.weight" else b[name]  # Table 8 -> Table 3
            torch.testing.assert_close(a[name], theirs_as_ours, rtol=RTOL, atol=ATOL,
                                       msg=lambda m, n=name, t=t: f"{n} after step {t + 1}: {m}")
    assert not torch.allclose(our_logits[0], our_logits[-1], atol=1e-3)  # it trained


def test_mup_and_initcore_train_an_untied_gpt2_alike():
    """Table 8's readout under Adam is Table 3's with its eps divided by M: its gradients are M times smaller
    and Adam compares them with eps. With that eps on mup's readout group the two train alike."""
    inputs, targets = _batch()
    ours, ours_opt = _ours(False, inputs)
    theirs, theirs_opt = _theirs(ours, False, readout_eps=EPS / M)
    # mup's rescaling took the SP-scale copy to Table 8's weight, M times initcore's Table 3 head
    torch.testing.assert_close(theirs.lm_head.weight, ours.lm_head.weight * M, rtol=0, atol=0)
    assert ours.lm_head.weight.std().item() == pytest.approx(math.sqrt(BASE) / WIDTH, rel=0.05)  # 16384 draws
    _assert_same_training(ours, ours_opt, theirs, theirs_opt, inputs, targets)


def test_under_mup_s_own_adam_the_readout_s_first_step_differs_by_eps_alone():
    """MuAdam as a user runs it (eps 1e-8 on every group): after one step every parameter is initcore's but
    the readout, which took Adam's step with eps M times larger relative to its gradient g (Table 3's):
    -lr/M g/(|g| + M eps) where initcore's is -lr/M g/(|g| + eps), exactly as predicted."""
    inputs, targets = _batch()
    ours, ours_opt = _ours(False, inputs)
    theirs, theirs_opt = _theirs(ours, False)
    start = ours.lm_head.weight.detach().clone()
    for model, opt in ((ours, ours_opt), (theirs, theirs_opt)):
        opt.zero_grad()
        F.cross_entropy(model(**inputs).logits.reshape(-1, VOCAB), targets.reshape(-1)).backward()
        opt.step()
    g = ours.lm_head.weight.grad
    predicted = start - LR / M * g / (g.abs() + M * EPS)  # Adam's first step: m_hat = g, sqrt(v_hat) = |g|
    mine = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        if name != "lm_head.weight":
            torch.testing.assert_close(p, mine[name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
    theirs_as_ours = theirs.lm_head.weight.detach() / M
    # the eps effect is there (up to 3e-5 on this batch, where gradients reach 1e-7) and is all there is:
    # the prediction's own rounding (Adam's sqrt(v)/sqrt(1 - beta2) against |g|) is ~1e-7 of a step lr/M
    assert (theirs_as_ours - ours.lm_head.weight).abs().max() > 1e-6
    torch.testing.assert_close(theirs_as_ours, predicted, rtol=RTOL, atol=1e-9)


def test_tied_gpt2_mup_rescales_the_shared_table_and_that_is_the_whole_difference():
    inputs, targets = _batch()
    ours, ours_opt = _ours(True, inputs)
    theirs, _ = _theirs(ours, True)
    # mup issue #55: set_base_shapes multiplied the embedding table itself by sqrt(M)
    torch.testing.assert_close(theirs.transformer.wte.weight, ours.transformer.wte.weight * math.sqrt(M), rtol=0,
                               atol=0)
    assert theirs.lm_head.weight is theirs.transformer.wte.weight
    with torch.no_grad():
        assert not torch.allclose(ours(**inputs).logits, theirs(**inputs).logits, rtol=0.1)
    # without that rescaling (all set_base_shapes does besides the shapes here), the two train alike
    theirs, theirs_opt = _theirs(ours, True, rescale=False)
    _assert_same_training(ours, ours_opt, theirs, theirs_opt, inputs, targets)
