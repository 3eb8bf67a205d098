"""initcore.cli._roles: ``--roles PATTERN=ROLE,...`` and ``--roles FILE`` give ``init.apply`` the mapping a
Python caller would (GPT-2's roles included), on trace, diagnose and report; the library's advice about
``roles=`` reads as ``--roles``; each bad entry exits 2 with one line."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from initcore import cli, init, zoo
from initcore.cli import _roles
from initcore.models import Role

# GPT-2's roles (zoo.GPT2_ROLES) as a user types them.
GPT2_TEXT = ("*h.*.attn.c_attn.weight=qkv:q,k,v:transposed,*h.*.attn.c_proj.weight=attn_out:transposed,"
             "*h.*.mlp.c_fc.weight=mlp_in:transposed,*h.*.mlp.c_proj.weight=mlp_out:transposed")

# A GPT-style model of the user's, in plain torch: its projections are a Conv1D of its own (weight stored
# (in, out), as Hugging Face's), which no role can be inferred for.
USER_GPT = """
import torch
from torch import nn


class Conv1D(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)

    def forward(self, x):
        q, k, v = self.c_attn(self.ln(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return x + self.c_proj(att @ v)


class GPT(nn.Module):
    def __init__(self, d=16, n_layer=2, vocab=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.h = nn.ModuleList(Block(d) for _ in range(n_layer))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.head(x)


def make():
    return GPT()
"""
USER_ROLES = "*.c_attn.weight=qkv:q,k,v:transposed,*.c_proj.weight=attn_out:transposed,head.weight=head"


@pytest.fixture
def user_gpt(tmp_path, monkeypatch) -> str:
    name = f"user_gpt_{abs(hash(tmp_path.name))}"
    (tmp_path / f"{name}.py").write_text(USER_GPT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


# --- the syntax -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, spec", [
    ("attn_out", "attn_out"),
    ("qkv:3", ("qkv", 3)),
    ("qkv:q,k,v", Role("qkv", parts=("q", "k", "v"))),
    ("qkv:q,k,v:transposed", Role("qkv", parts=("q", "k", "v"), transposed=True)),
    ("mlp_out:transposed", Role("mlp_out", transposed=True)),
    ("qkv:transposed:q,k", Role("qkv", parts=("q", "k"), transposed=True)),  # details in any order
    ("qkv:q", Role("qkv", parts=("q",))),  # nn.MultiheadAttention's q_proj_weight
])
def test_a_role_spec_is_what_init_apply_takes(text, spec):
    assert _roles.role_spec(text) == spec


def test_the_modules_examples_hold():
    result = doctest.testmod(_roles)
    assert result.attempted >= 4 and result.failed == 0  # role_spec (2), parse_roles, cli_words


def test_gpt2s_roles_typed_are_the_zoos_mapping():
    assert _roles.parse_roles(GPT2_TEXT) == zoo.GPT2_ROLES
    assert _roles.parse_roles(_roles.describe_roles(zoo.GPT2_ROLES)) == zoo.GPT2_ROLES  # and back


def test_a_roles_file_takes_lines_comments_and_several_entries_a_line(tmp_path):
    path = tmp_path / "roles.txt"
    path.write_text("# GPT-2 (Hugging Face): Conv1D weights are (in, out)\n\n"
                    + GPT2_TEXT.replace(",*h", "\n*h", 2) + "  # the rest\n")
    assert _roles.parse_roles(str(path)) == zoo.GPT2_ROLES
    assert _roles.parse_roles(None) is None


def test_the_first_entry_for_a_pattern_wins_across_repeated_options():
    parser = cli.build_parser()
    args = parser.parse_args(["trace", "--roles", "a=hidden,b=norm", "--roles", "a=head,c=bias"])
    assert args.roles == {"a": "hidden", "b": "norm", "c": "bias"}
    assert "--roles" in cli._common.given(args)


@pytest.mark.parametrize("text, message", [
    ("a=qvk", "a: unknown role 'qvk'; valid: embedding, qkv, attn_out, mlp_in, mlp_out, hidden, head, norm, bias, "
              "gate; did you mean qkv?"),
    ("a=qkv:q,k,v:transposd", "after the role name come its parts (q,k,v) or their number (3), and 'transposed', "
                              "each once, separated by ':'; got 'transposd'; did you mean transposed?"),
    ("a=qkv:q,q", "parts are distinct names separated by commas (q,k,v), got 'q,q'"),
    ("a=qkv:3:transposed", "with 'transposed', name the packed matrices (q,k,v) instead of counting them"),
    ("a=qkv:transposed:transposed", "got 'transposed'"),
    ("a=hidden,b", "'b' is not PATTERN=ROLE[:PARTS][:transposed], e.g. '*.c_attn.weight=qkv:q,k,v:transposed'"),
    ("=hidden", "'=hidden' is not PATTERN=ROLE"),
    ("a=", "'a=' is not PATTERN=ROLE"),
    ("no_such_roles_file.txt", "--roles no_such_roles_file.txt: no such file; give a file of PATTERN=ROLE lines, "
                               "or the entries themselves"),
])
def test_a_bad_entry_names_what_is_valid(text, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as exc:
        _roles.parse_roles(text)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_bad_line_of_a_file_is_named_by_its_number(tmp_path):
    (tmp_path / "roles.txt").write_text("# roles\n*.c_attn.weight=qkv:q,k,v\nc_proj attn_out\n")
    with pytest.raises(ValueError, match=r"--roles .*roles.txt, line 3: 'c_proj attn_out' is not PATTERN=ROLE"):
        _roles.parse_roles(str(tmp_path / "roles.txt"))
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match=r"empty.txt: no PATTERN=ROLE line in it"):
        _roles.parse_roles(str(tmp_path / "empty.txt"))


# --- the library's advice, said on the command line ----------------------------------------------------------


class _Conv1D(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 4))


@pytest.mark.parametrize("model, strategy, roles", [
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)), "gpt2", None),  # only guessed: gpt2 refuses
    (nn.Sequential(_Conv1D()), "xavier_uniform", None),  # no role at all
    (nn.Sequential(nn.Linear(4, 4)), "xavier_uniform", {"*.c_proj.weight": "attn_out"}),  # a pattern matching none
])
def test_the_librarys_roles_advice_reads_as_the_option(model, strategy, roles):
    """Each of the library's messages about roles (made here by the library itself, not copied) reads as
    --roles on the command line: no Python dict is left in it."""
    with pytest.raises(ValueError) as exc:
        init.apply(model, strategy, roles=roles)
    said = _roles.cli_words(str(exc.value))
    assert "roles={" not in said and "{'" not in said and "--roles" in said, said


# --- on the command line ----------------------------------------------------------------------------------------


def test_roles_on_the_command_line_init_as_the_mapping_does_in_python(user_gpt):
    """trace --init gpt2 --roles ...: the weights are init.apply's with the parsed mapping, drawn after the
    inputs from the generator of --seed (as build_model_and_inputs does for any model of yours)."""
    argv = ["trace", "--model", f"{user_gpt}:make", "--input-shape", "2,8", "--vocab", "32", "--init", "gpt2",
            "--seed", "3", "--roles", USER_ROLES]
    model, idx = cli.build_model_and_inputs(cli.build_parser().parse_args(argv))
    expected = sys.modules[user_gpt].make()
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(idx, torch.randint(0, 32, (2, 8), generator=gen))
    init.apply(expected, "gpt2", generator=gen, roles=_roles.parse_roles(USER_ROLES))
    for (name, p), q in zip(model.named_parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    proj = dict(model.named_parameters())["h.1.c_proj.weight"]  # gpt2: 0.02/sqrt(2 * 2 blocks) = 0.01
    assert 0.007 < float(proj.detach().std()) < 0.013  # 256 draws: the std's relative spread is ~1/sqrt(2 * 256) = 4.4%


@pytest.mark.parametrize("command", ["trace", "diagnose"])
def test_init_gpt2_on_a_users_model_names_roles_then_runs_with_them(user_gpt, tmp_path, capsys, command):
    argv = [command, "--model", f"{user_gpt}:make", "--input-shape", "2,8", "--vocab", "32", "--init", "gpt2"]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "h.0.c_attn.weight" in err and "give --roles PATTERN=ROLE" in err and "roles={" not in err, err
    (tmp_path / "roles.txt").write_text(USER_ROLES.replace(",", "\n").replace("q\nk\nv", "q,k,v") + "\n")
    assert cli.main([*argv, "--roles", "roles.txt"]) == 0
    header = capsys.readouterr().out.replace("\n#   ", " ")
    assert "init gpt2 (--roles *.c_attn.weight=qkv:q,k,v:transposed, *.c_proj.weight=attn_out:transposed" in header


@pytest.mark.parametrize("extra, message", [
    (["--roles", "*.c_attn.weight=qkv:q,k,v:transposed"], "--roles needs --init: --model {m}:make keeps its "
                                                          "factory's init unless --init is given"),
    (["--init", "xavier_uniform", "--roles", "*.nothing=hidden"], "--roles pattern '*.nothing' matches no "
                                                                  "parameter of GPT"),
    (["--init", "xavier_uniform", "--roles", "*.c_attn.weight=qkvv"], "argument --roles: *.c_attn.weight: unknown "
                                                                      "role 'qkvv'"),
    (["--init", "xavier_uniform", "--roles", "roles_missing.txt"], "argument --roles: --roles roles_missing.txt: "
                                                                   "no such file"),
])
def test_bad_roles_exit_2_with_one_line(user_gpt, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["trace", "--model", f"{user_gpt}:make", "--input-shape", "2,8", "--vocab", "32", *extra])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("initcore: error: ") and message.format(m=user_gpt) in err, err


def test_roles_are_for_a_model_of_yours(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["trace", "--width", "8", "--depth", "2", "--roles", "*=hidden"])
    assert exc.value.code == 2
    assert "--roles does not apply to --model mlp (--roles is for a model of yours)" in capsys.readouterr().err


def test_as_a_user_runs_it(tmp_path):
    """From the user's folder, as a subprocess: the refusal names --roles in one line, and the same command
    with --roles exits 0."""
    (tmp_path / "mygpt.py").write_text(textwrap.dedent(USER_GPT))
    argv = [sys.executable, "-m", "initcore", "trace", "--model", "mygpt:make", "--input-shape", "2,8", "--vocab",
            "32", "--init", "gpt2", "--format", "csv"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert "--roles PATTERN=ROLE" in done.stderr
    done = subprocess.run([*argv, "--roles", USER_ROLES], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("module,")


COORD_FACTORY = """
import torch
from torch import nn


class Conv1D(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0, 0.02))

    def forward(self, x):
        return x @ self.weight


def make(seed, width):
    model = nn.Sequential(nn.Linear(8, width), nn.Tanh(), Conv1D(width, width), nn.Tanh(), nn.Linear(width, 4))
    return model, torch.randn(16, 8, generator=torch.Generator().manual_seed(seed))
"""


def test_coord_takes_roles_for_a_model_of_yours(tmp_path, monkeypatch, capsys):
    """initcore coord --model FACTORY --init STRATEGY: a parameter without a role is refused in one line naming
    --roles; with --roles the check runs to its verdict (0 or 1); on a built-in model --roles is refused."""
    name = f"coord_user_{abs(hash(tmp_path.name))}"
    (tmp_path / f"{name}.py").write_text(COORD_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    argv = ["coord", "--model", f"{name}:make", "--init", "xavier_uniform", "--widths", "8,16", "--steps", "1",
            "--no-plot", "--format", "csv"]
    for extra, message in [([], "parameter '2.weight' has no role; declare it in its module's ROLES, or give --roles "
                                "PATTERN=ROLE"),
                           (["--model", "mlp", "--roles", "*=hidden"], "--roles does not apply to --model mlp")]:
        with pytest.raises(SystemExit) as exc:
            cli.main([*argv, *extra])
        out, err = capsys.readouterr()
        assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert cli.main([*argv, "--roles", "2.weight=hidden:transposed"]) in (0, 1)
    assert "coordinate" in capsys.readouterr().out.splitlines()[0]
