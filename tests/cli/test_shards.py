"""initcore shards: a table of the sharded init, exit 0 when every check passes, 1 when one fails, 2 on bad input;
initcore's transformer, a model of yours (--model, --init) and a recipe of yours (--recipe), in your folder."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from initcore import cli

ROOT = Path(__file__).resolve().parents[2]

SMALL = ["--n-layers", "1", "--d-model", "64", "--d-ff", "96", "--vocab-size", "200"]


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.startswith(("embed.", "blocks.", "norm_f."))]


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_initcore_recipe_prints_one_passing_row_per_parameter(parallel, capsys):
    assert cli.main(["shards", "--strategy", "gpt2", "--parallel", parallel, "--world-size", "2", *SMALL]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = _rows(out)
    assert len(rows) == 19  # embedding, 4 norm tensors, q k v o fc1 fc2 with biases, final norm (2)
    assert max(map(len, out.splitlines())) <= 120
    q = next(r for r in rows if r[0] == "blocks.0.attn.q.weight")
    assert q[1:4] == ["qkv", "64x64", "S(0)x2"]
    assert q[-3:] == ["yes", "yes", "yes"]  # independent, identical, initialized
    assert "every check passes: 19 parameters" in out


def test_the_naive_recipe_exits_1_naming_the_equal_shards(capsys):
    assert cli.main(["shards", "--naive", "--parallel", "tp", "--world-size", "2", *SMALL]) == 1
    out, _ = capsys.readouterr()
    assert "naive nn.init (tp" in out.splitlines()[0]
    q = next(r for r in _rows(out) if r[0] == "blocks.0.attn.q.weight")
    assert q[-3] == "NO"  # not independent
    assert "blocks.0.attn.q.weight (qkv): shards 0 and 1 are equal" in out


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "xavierr"], "unknown strategy 'xavierr'; valid: xavier_uniform"),
    (["--world-size", "0"], "--world-size: must be an integer in 1..64, got '0'"),
    (["--parallel", "ddp"], "invalid choice: 'ddp'"),
    (["--parallel", "tp", "--attention", "torch_mha"], "valid for tp: sdpa"),
    (["--n-heads", "5"], "d_model (128) must be divisible by n_heads (5)"),
    (["--backend", "nccl", "--world-size", "64"], "nccl with 64 ranks needs 64 CUDA devices"),
    (["--naive", "--strategy", "gpt2"], "--naive writes the 'standard' strategy"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["shards", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err


# --- a model of yours and a recipe of yours, as a user runs them: files in a folder ---------------------------

USER_GPT = textwrap.dedent('''
    """A nanoGPT-style model and the recipes a trainer writes for it (FSDP2 and tensor parallel)."""
    import torch
    from torch import nn
    from torch.nn import functional as F


    class Block(nn.Module):
        def __init__(self, d=64):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.c_fc, self.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            x = self.ln_1(x)
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


    class GPT(nn.Module):
        def __init__(self, vocab=128, d=64, n_layer=2):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.h = nn.ModuleList(Block(d) for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(d)

        def forward(self, idx):
            x = self.wte(idx)
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T


    def _init_weights(module):
        """nanoGPT's: N(0, 0.02) for Linear and Embedding, zero biases; LayerNorm left to its constructor."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)


    def init_weights(model):
        model.apply(_init_weights)


    def build(seed):
        return GPT()


    def fsdp(mesh, generator):
        """Right: the whole model initialized alike on every rank, then sharded (FSDP2 keeps each rank's slice)."""
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        model = GPT()
        model.apply(_init_weights)
        for block in model.h:
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)


    def fsdp_naive(mesh, generator):
        """Wrong: the usual meta-device recipe, then nanoGPT's init on the shards, every rank seeded alike."""
        from torch.distributed.fsdp import fully_shard

        with torch.device("meta"):
            model = GPT()
        for block in model.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cpu")
        torch.manual_seed(0)
        model.apply(_init_weights)
        return model


    def _tp(model, mesh):
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        for block in model.h:
            parallelize_module(block, mesh, {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()})
        return model


    def tp(mesh, generator):
        """Right: the whole model initialized alike on every rank, then parallelized."""
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        model = GPT()
        model.apply(_init_weights)
        return _tp(model, mesh)


    def tp_naive(mesh, generator):
        with torch.device("meta"):
            model = GPT()
        _tp(model, mesh).to_empty(device="cpu")
        torch.manual_seed(0)
        model.apply(_init_weights)
        return model


    def per_rank_init(model, generator):
        """Each rank draws its own shard from its own seed: right scale, independent shards, and a full tensor
        that depends on how it is cut."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)) + rank)
        with torch.no_grad():
            for p in model.parameters():
                local = p.to_local() if hasattr(p, "to_local") else p
                local.normal_(0.0, 0.02, generator=g) if p.dim() == 2 else local.fill_(1.0)


    def raises(mesh, generator):
        raise RuntimeError("CUDA out of memory (pretend)")


    def not_a_model(mesh, generator):
        return {"model": None}
''')


@pytest.fixture
def user_gpt(tmp_path, monkeypatch):
    """The user's file in a folder of its own, that folder the current one; a module name of its own per test (the
    forked ranks find it by name)."""
    name = f"user_gpt_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_GPT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _initcore(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("initcore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "initcore"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([*command, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_user_recipe_passes_and_the_naive_one_fails_in_the_user_s_folder(tmp_path):
    (tmp_path / "mygpt.py").write_text(USER_GPT)
    done = _initcore(tmp_path, "shards", "--recipe", "mygpt:fsdp")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("# fsdp: your recipe mygpt:fsdp; world size 1,2 (gloo), seed 0")
    assert "# every check passes: 19 parameters" in done.stdout
    naive = _initcore(tmp_path, "shards", "--recipe", "mygpt:fsdp_naive")
    assert naive.returncode == 1, naive.stdout + naive.stderr
    out = naive.stdout
    assert "world size 2, h.0.c_fc.weight (hidden): shards 0 and 1 are equal" in out  # the same seed on every rank
    assert "world size 2, ln_f.weight (norm): NaN after init" in out  # LayerNorm never initialized after to_empty
    assert {p.name for p in tmp_path.iterdir()} <= {"mygpt.py", "__pycache__"}  # nothing else left behind


def test_tensor_parallel_recipes_of_yours(user_gpt, capsys):
    assert cli.main(["shards", "--recipe", f"{user_gpt}:tp", "--world-size", "2"]) == 0
    out, _ = capsys.readouterr()
    c_fc = next(r for r in _rows_of(out) if r[0] == "h.0.c_fc.weight")
    assert c_fc[3] == "S(0)x2" and c_fc[-4:-1] == ["yes", "yes", "yes"]  # independent, identical, initialized
    assert cli.main(["shards", "--recipe", f"{user_gpt}:tp_naive", "--world-size", "2"]) == 1
    out, _ = capsys.readouterr()
    assert "h.0.c_proj.weight (hidden): shards 0 and 1 are equal" in out


def _rows_of(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.startswith(("wte.", "h.", "ln_f."))]


def test_a_second_recipe_must_give_the_same_full_tensors(user_gpt, capsys):
    argv = ["shards", "--recipe", f"{user_gpt}:fsdp", "--recipe", f"{user_gpt}:tp", "--world-size", "2"]
    assert cli.main(argv) == 0  # one model, cut two ways, initialized before the cut: the same tensors
    out, _ = capsys.readouterr()
    assert f"# placement: bit for bit to the same model under --recipe {user_gpt}:tp" in out
    assert cli.main(["shards", "--recipe", f"{user_gpt}:fsdp_naive", "--recipe", f"{user_gpt}:tp_naive",
                     "--world-size", "2"]) == 1
    out, _ = capsys.readouterr()
    assert f"h.0.c_proj.weight (hidden): not bit-identical under --recipe {user_gpt}:tp_naive" in out


def test_a_user_model_with_a_strategy_passes_and_with_nanogpt_s_init_fails(user_gpt, capsys):
    assert cli.main(["shards", "--model", f"{user_gpt}:build", "--init", "kaiming_normal", "--placements"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"# {user_gpt}:build, init kaiming_normal (fsdp): model {user_gpt}:build")
    assert "placement" in out.splitlines()[4]  # the column
    assert cli.main(["shards", "--model", f"{user_gpt}:build", "--init", f"{user_gpt}:init_weights"]) == 1
    out, _ = capsys.readouterr()
    assert "h.0.c_fc.weight (hidden): shards 0 and 1 are equal" in out and "ln_f.weight (norm): NaN after init" in out


def test_roles_reach_the_strategy(user_gpt, capsys):
    argv = ["shards", "--model", f"{user_gpt}:build", "--init", "gpt2"]
    assert cli.main([*argv, "--roles", "h.*.c_proj.weight=attn_out"]) == 0
    out, _ = capsys.readouterr()
    c_proj = next(r for r in _rows_of(out) if r[0] == "h.0.c_proj.weight")
    assert c_proj[1] == "attn_out"
    # GPT-2's 0.02 / sqrt(2 L) on the residual projections, L = 2 blocks: what the strategy declares
    assert float(c_proj[5]) == pytest.approx(0.02 / 2, rel=1e-3)


def test_placements_fail_on_an_init_whose_full_tensor_depends_on_the_cut(user_gpt, capsys):
    assert cli.main(["shards", "--model", f"{user_gpt}:build", "--init", f"{user_gpt}:per_rank_init",
                     "--placements"]) == 1
    out, _ = capsys.readouterr()
    assert "h.0.c_fc.weight (hidden): not bit-identical under Shard(1)" in out
    c_fc = next(r for r in _rows_of(out) if r[0] == "h.0.c_fc.weight")
    assert c_fc[-1] == "NO" and c_fc[-4] == "yes"  # placement fails; its shards are independent (columns: ..., KS p,
    # independent, identical, initialized, placement)


def test_hsdp_of_a_user_model(user_gpt, capsys):
    argv = ["shards", "--model", f"{user_gpt}:build", "--parallel", "hsdp", "--world-size", "4"]
    assert cli.main([*argv, "--init", "kaiming_normal"]) == 0
    out, _ = capsys.readouterr()
    c_fc = next(r for r in _rows_of(out) if r[0] == "h.0.c_fc.weight")
    assert c_fc[3:5] == ["R,", "S(0)x4"] and c_fc[-1] == "yes"  # replicas agree


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "{m}:nope"], "--recipe {m}:nope: {m} has no attribute 'nope'; its callables: Block, GPT"),
    (["--recipe", "{m}:raises"], "--recipe {m}:raises: rank 0 of 1 raised: RuntimeError: CUDA out of memory"),
    (["--recipe", "{m}:not_a_model"], "the recipe returned dict; it must return the sharded model (nn.Module)"),
    (["--recipe", "{m}:fsdp", "--model", "{m}:build"], "--recipe and --model: give one"),
    (["--recipe", "{m}:fsdp", "--strategy", "gpt2"], "--strategy does not apply to --recipe"),
    (["--recipe", "{m}:fsdp", "--placements"], "--placements does not apply to --recipe"),
    (["--model", "{m}:build"], "--model {m}:build needs --init STRATEGY or --init package.module:function"),
    (["--model", "{m}:build", "--init", "xavierr"], "unknown strategy 'xavierr'"),
    (["--model", "{m}:build", "--init", "{m}:nope"], "--init {m}:nope: {m} has no attribute 'nope'"),
    (["--model", "{m}:build", "--init", "gpt2", "--parallel", "tp"], "--parallel tp needs a plan for your model"),
    (["--model", "{m}:build", "--init", "gpt2", "--n-layers", "3"], "--n-layers does not apply to --model"),
    (["--model", "{m}:build", "--init", "{m}:init_weights", "--roles", "h.*=hidden"], "--roles goes with --init "
                                                                                     "STRATEGY"),
    (["--init", "gpt2"], "--init goes with --model"),
    (["--parallel", "hsdp", "--world-size", "3"], "--parallel hsdp needs even world sizes"),
    (["--parallel", "tp", "--placements"], "--placements shards along dim 1 with FSDP2"),
    (["--recipe", "nodots"], "must be package.module:name"),
])
def test_bad_input_of_yours_is_one_line_and_exit_2(user_gpt, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["shards", "--world-size", "1", *(a.format(m=user_gpt) for a in argv)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message.format(m=user_gpt) in err, err


HF_GPT2 = textwrap.dedent('''
    from transformers import GPT2Config, GPT2LMHeadModel


    def gpt2(seed):
        return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                          bos_token_id=0, eos_token_id=0))


    def hf_init(model):
        model.apply(model._init_weights)  # what post_init runs: nn.init on whatever it finds
''')
HF_ROLES = ("*.c_attn.weight=qkv:q,k,v:transposed,*.attn.c_proj.weight=attn_out:transposed,"
            "*.c_fc.weight=mlp_in:transposed,*.mlp.c_proj.weight=mlp_out:transposed")


def test_hugging_face_gpt2_sharded_by_a_strategy_passes_and_by_its_own_init_fails(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    name = f"hf_gpt2_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(HF_GPT2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["shards", "--model", f"{name}:gpt2"]
    assert cli.main([*argv, "--init", "gpt2", "--roles", HF_ROLES, "--placements"]) == 0
    out, _ = capsys.readouterr()
    c_proj = next(line.split() for line in out.splitlines() if line.startswith("transformer.h.1.mlp.c_proj.weight"))
    # Conv1D (in, out) = 128x32, its role from --roles; GPT-2's 0.02 / sqrt(2 L), L = 2: 0.01 as declared
    assert c_proj[1:3] == ["mlp_out", "128x32"] and float(c_proj[5]) == pytest.approx(0.01)
    assert cli.main([*argv, "--init", f"{name}:hf_init"]) == 1
    out, _ = capsys.readouterr()
    assert "transformer.h.0.mlp.c_fc.weight (-): shards 0 and 1 are equal" in out
