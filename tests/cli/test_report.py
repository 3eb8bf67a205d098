"""initcore report on the command line: what it writes, and --out checked before any experiment runs."""

from __future__ import annotations

import os
import sys

import pytest

from initcore import cli, report

pytest.importorskip("matplotlib")



def test_cli_report_writes_the_page(tmp_path, monkeypatch, capsys):
    seeds = []
    monkeypatch.setattr(report, "collect", lambda seed, runs=None: seeds.append(seed) or [])  # what is drawn: above
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
