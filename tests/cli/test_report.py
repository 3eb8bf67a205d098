"""initcore report on the command line: what it writes, and --out checked before any experiment runs."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import pandas as pd
import pytest

from initcore import cli, report

pytest.importorskip("matplotlib")



def test_cli_report_writes_the_page(tmp_path, monkeypatch, capsys):
    seeds = []
    # what is drawn is tests/report's; here, that the command runs the collection with its seed
    monkeypatch.setattr(report, "collect", lambda seed, runs=None, bands=None: seeds.append(seed) or [])
    assert cli.main(["report", "--out", str(tmp_path / "r"), "--seed", "1"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'r' / 'index.html'} (open it in a browser)\n"
    assert "seed 1" in (tmp_path / "r" / "index.html").read_text()
    assert seeds == [1]


def test_cli_report_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["report", "--out", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert captured.err == "initcore: error: matplotlib is not installed; pip install 'initcore[plot]'\n"
    assert captured.out == ""
    assert not (tmp_path / "r").exists()


def test_cli_report_unwritable_out_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "collect", lambda seed, runs=None: [])
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--out", str(tmp_path / "file")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"initcore: error: --out {tmp_path / 'file'}: ") and err.count("\n") == 1


@pytest.fixture
def nothing_runs(monkeypatch):
    monkeypatch.setattr(report, "collect", lambda *a, **k: pytest.fail("experiments ran before --out was checked"))


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_out_a_file_is_refused_before_any_work(tmp_path, capsys, nothing_runs):
    (tmp_path / "file").write_text("")
    err = _error(capsys, ["report", "--out", str(tmp_path / "file")])
    assert err == f"initcore: error: --out {tmp_path / 'file'}: exists and is not a folder; give a folder " \
                  "(created if missing)\n"
    err = _error(capsys, ["report", "--out", str(tmp_path / "file" / "below")])
    assert f"cannot be made: {tmp_path / 'file'} is not a folder" in err


@pytest.mark.parametrize("out", ["", " "])
def test_out_empty_is_refused_not_the_current_folder(tmp_path, capsys, nothing_runs, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["report", "--out", out])
    assert err.startswith(f"initcore: error: --out {out!r}: give the folder to write the report into")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_out_unwritable_is_refused_before_any_work(tmp_path, capsys, nothing_runs):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = _error(capsys, ["report", "--out", str(locked / "r")])
    assert f"({locked}, where it would be made) is not writable" in err


def test_out_unwritable_by_permissions_is_refused(tmp_path, capsys, nothing_runs, monkeypatch):
    """As the test above, for runs as root (where chmod does not stop a write): os.access says no."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    err = _error(capsys, ["report", "--out", str(tmp_path / "r")])
    assert "is not writable; give one you can write to" in err


def test_seed_out_of_range_names_the_option(tmp_path, capsys, nothing_runs):
    err = _error(capsys, ["report", "--out", str(tmp_path / "r"), "--seed", str(2**64)])
    assert "argument --seed: must be an integer in 0..18446744073709551615" in err


def test_model_options_need_a_model(tmp_path, capsys, nothing_runs):
    err = _error(capsys, ["report", "--out", str(tmp_path / "r"), "--width", "8", "--init", "xavier_uniform"])
    assert err == "initcore: error: --init, --width need --model: without it the report draws initcore's " \
                  "experiments, whose models and inputs are their own\n"
    err = _error(capsys, ["report", "--out", str(tmp_path / "r"), "--select", "blocks"])
    assert "--select needs --model" in err
    assert not (tmp_path / "r").exists()


def test_report_of_a_built_in_model(tmp_path, capsys, nothing_runs):
    out = tmp_path / "r"
    assert cli.main(["report", "--out", str(out), "--model", "mlp", "--width", "16", "--depth", "3", "--batch",
                     "32", "--activation", "relu", "--init", "kaiming_normal"]) == 0
    assert capsys.readouterr().out == f"wrote {out / 'index.html'} (open it in a browser)\n"
    page = (out / "index.html").read_text()
    assert "Signal propagation at initialization: mlp 16-&gt;16 x3 relu, init kaiming_normal" in page
    assert {p.name for p in out.glob("*.png")} == {"model_scale.png", "model_grad.png", "model_fractions.png",
                                                   "model_channels.png", "model_precision.png"}
    trace = pd.read_csv(out / "model_trace.csv")
    assert trace["module"].tolist() == ["layers.0", "layers.1", "layers.2"]


def test_report_of_a_model_of_yours(tmp_path, capsys, monkeypatch, nothing_runs):
    name = f"report_model_{abs(hash(tmp_path.name))}"
    (tmp_path / f"{name}.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential("
                                         "nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["report", "--out", "r", "--model", f"{name}:build", "--input-shape", "32,8"]) == 0
    assert capsys.readouterr().out == "wrote r/index.html (open it in a browser)\n"
    trace = pd.read_csv(tmp_path / "r" / "model_trace.csv")
    assert trace["kind"].tolist() == ["linear", "tanh", "linear"]
    err = _error(capsys, ["report", "--out", "r2", "--model", f"{name}:missing", "--input-shape", "32,8"])
    assert f"--model {name}:missing: {name} has no attribute 'missing'" in err
    err = _error(capsys, ["report", "--out", "r2", "--model", f"{name}:build", "--input-shape", "32,8",
                          "--select", "nothing*"])
    assert "--select nothing*: Sequential has no module matching" in err
    assert not (tmp_path / "r2").exists()


def test_transfer_writes_the_sweep_page_alone(tmp_path, capsys, monkeypatch, nothing_runs):
    from initcore import transfer
    from initcore.report import transfer as report_transfer

    asked = []

    def tiny(seed=0):  # the sweep's own runs shrunk, at the seeds the command gives
        asked.append(seed)
        return tuple(replace(run, widths=(8, 16), lrs=(1e-3, 1e-2), steps=2, tail=1)
                     for run in transfer_runs(seed))

    transfer_runs = report_transfer.runs
    monkeypatch.setattr(report_transfer, "runs", tiny)
    out = tmp_path / "r"
    assert cli.main(["report", "--out", str(out), "--transfer", "--seed", "4"]) == 0
    assert capsys.readouterr().out == f"wrote {out / 'index.html'} (open it in a browser)\n"
    assert asked == [4] and {p.name for p in out.iterdir()} == {"index.html", "transfer.png", "transfer.csv"}
    assert set(pd.read_csv(out / "transfer.csv")["parametrization"]) == set(transfer.PARAMETRIZATIONS)


def test_transfer_goes_without_a_model(tmp_path, capsys, nothing_runs):
    err = _error(capsys, ["report", "--out", str(tmp_path / "r"), "--transfer", "--model", "mlp"])
    assert err == "initcore: error: --transfer goes without --model: it sweeps initcore's own MLP " \
                  "(initcore.transfer)\n"
    err = _error(capsys, ["report", "--out", str(tmp_path / "r"), "--transfer", "--width", "8"])
    assert err == "initcore: error: --transfer goes without --width: it sweeps initcore's own MLP\n"
    assert not (tmp_path / "r").exists()
