"""initcore mup-lint, as a user runs it: a factory module of theirs in a folder, ``python -m initcore`` from
there; exit 0 on a model and optimizer muP holds for, 1 with the table on one it does not, 2 with one line on
bad input; nothing left in the folder but the user's file (and Python's bytecode cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from initcore import cli

ROOT = Path(__file__).resolve().parents[2]

USER_MODEL = textwrap.dedent("""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    VOCAB = 97


    class TinyGPT(nn.Module):
        def __init__(self, width, heads=4, scale="1/d_head"):
            super().__init__()
            self.heads, self.d_head = heads, width // heads
            self.scale = 1 / self.d_head if scale == "1/d_head" else None  # None: sdpa's 1/sqrt(d_head)
            self.wte = nn.Embedding(VOCAB, width)
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.q, self.k, self.v, self.proj = (nn.Linear(width, width) for _ in range(4))
            self.lm_head = nn.Linear(width, VOCAB, bias=False)

        def forward(self, idx):
            x = self.wte(idx)
            B, T, C = x.shape
            h = self.ln1(x)
            q, k, v = (f(h).view(B, T, self.heads, self.d_head).transpose(1, 2) for f in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return self.lm_head(self.ln2(x))


    def batch(seed):
        return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(seed))


    def mup(seed, width, base=32):  # muP by hand: embedding N(0, 1), hidden N(0, 1/fan_in), head N(0, base/fan_in^2)
        model = TinyGPT(width)
        with torch.no_grad():
            nn.init.normal_(model.wte.weight, 0, 1)
            for lin in (model.q, model.k, model.v, model.proj):
                nn.init.normal_(lin.weight, 0, width ** -0.5)
            nn.init.normal_(model.lm_head.weight, 0, math.sqrt(base) / width)
        return model, batch(seed)


    def standard(seed, width):  # torch's defaults and sdpa's scale
        return TinyGPT(width, scale=None), batch(seed), batch(seed + 1)


    def hf(seed, width):
        from initcore import zoo
        return zoo.gpt2(seed, n_layer=2, n_embd=width, n_head=4, vocab_size=VOCAB, n_positions=16, seq_len=16)


    def adam(model):
        return torch.optim.Adam(model.parameters(), lr=1e-3)


    def mup_adam(model, base=32):  # muP's groups by hand: lr / m_in for every matrix whose fan-in grows
        m = model.wte.embedding_dim / base
        matrices = [model.q.weight, model.k.weight, model.v.weight, model.proj.weight, model.lm_head.weight]
        rest = [p for p in model.parameters() if all(p is not w for w in matrices)]
        return torch.optim.Adam([{"params": matrices, "lr": 1e-3 / m}, {"params": rest, "lr": 1e-3}])


    def broken(seed, width):
        raise RuntimeError("config has no attribute n_embd")


    def not_an_optimizer(model):
        return [p for p in model.parameters()]
""")

GPT2_ROLES = ("*h.*.attn.c_attn.weight=qkv:q,k,v:transposed,*h.*.attn.c_proj.weight=attn_out:transposed,"
              "*h.*.mlp.c_fc.weight=mlp_in:transposed,*h.*.mlp.c_proj.weight=mlp_out:transposed")


def _initcore(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "initcore", "mup-lint", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "gpt.py").write_text(USER_MODEL)
    yield tmp_path
    assert {p.name for p in tmp_path.iterdir()} <= {"gpt.py", "__pycache__"}  # nothing of ours left behind


def test_a_mup_model_and_optimizer_are_clean(folder):
    done = _initcore(folder, "--model", "gpt:mup", "--optimizer", "gpt:mup_adam")
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "# muP lint: gpt:mup at width 128 against base width 32, seed 0, optimizer gpt:mup_adam",
        "# clean: nothing breaks muP in attention scales, readout init, tied readout, optimizer groups"]


def test_a_standard_model_and_optimizer_exit_1_with_the_table(folder):
    done = _initcore(folder, "--model", "gpt:standard", "--optimizer", "gpt:adam")
    assert done.returncode == 1 and done.stderr == "", done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["problem", "where", "why"]
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["attention_scale", "TinyGPT.forward"], ["readout_init", "lm_head.weight"],
        ["optimizer_lr", "param_groups[0]:"]]
    assert "d_head^-0.50" in lines[2] and "fan_in^-0.50" in lines[3]
    assert "param_groups[0]: q.weight +4 more" in lines[4]
    assert lines[-1] == "# FAIL: 3 finding(s) break muP"


def test_hugging_face_gpt2_with_roles_names_its_attention_and_tied_readout(folder):
    done = _initcore(folder, "--model", "gpt:hf", "--roles", GPT2_ROLES, "--width", "64")
    assert done.returncode == 1, done.stdout + done.stderr
    found = [line.split()[:2] for line in done.stdout.splitlines()[2:-1]]
    assert found == [["attention_scale", "transformer.h.0.attn"], ["attention_scale", "transformer.h.1.attn"],
                     ["tied_multiplier", "transformer.wte.weight"]]


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt:nope"], "--model gpt:nope: gpt has no attribute 'nope'; its callables: TinyGPT, adam,"),
    (["--model", "gpt:mup", "--optimizer", "gpt:nope"], "--optimizer gpt:nope: gpt has no attribute 'nope'"),
    (["--model", "gpt:broken"], "--model gpt:broken: factory(seed, 128) raised RuntimeError: config has no "
                                "attribute n_embd"),
    (["--model", "gpt:mup", "--optimizer", "gpt:not_an_optimizer"],
     "--optimizer gpt:not_an_optimizer: make_optimizer(model) returned list; it must return a torch.optim"),
])
def test_bad_input_exits_2_with_one_line(folder, argv, message):
    done = _initcore(folder, *argv)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and message in done.stderr, done.stderr


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --model"),
    (["--model", "gpt"], "must be package.module:callable"),
    (["--model", "gpt:mup", "--width", "wide"], "must be an integer in 1.."),
    (["--model", "gpt:mup", "--width", "16"], "--width 16 must be larger than --base-width 32"),
    (["--model", "gpt:mup", "--roles", "q.weight=hiden"], "unknown role 'hiden'"),
])
def test_bad_options_exit_2_before_anything_is_built(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["mup-lint", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err
