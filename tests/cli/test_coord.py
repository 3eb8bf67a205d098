"""initcore coord: the table, the figure, CSV output, bad input."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from initcore import cli, report

SMALL = ["coord", "--widths", "16,32", "--steps", "2"]


def test_table_and_figure(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert cli.main([*SMALL, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("# coordinate check: mlp, init mup, adam lr 0.001, base width 16, seed 0")
    for word in ("coordinate", "w16", "w32", "slope", "layers.1", "output"):
        assert word in out
    png, csv = tmp_path / "coord-mlp-mup-adam.png", tmp_path / "coord-mlp-mup-adam.csv"
    assert png.read_bytes().startswith(b"\x89PNG")
    table = pd.read_csv(csv)
    assert list(table.columns) == ["step", "coordinate", "w16", "w32", "slope"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_csv_is_only_csv(capsys):
    assert cli.main([*SMALL, "--model", "transformer", "--init", "standard", "--format", "csv", "--no-plot"]) == 0
    out, _ = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out))
    assert {"blocks.0.attn", "blocks.0.attn:logits", "output"} <= set(table["coordinate"])
    assert table.loc[table["step"] == 1, "slope"].notna().all()


def test_without_matplotlib_it_says_so_before_training(capsys, monkeypatch):
    def unavailable():
        raise report.PlottingUnavailable(report.INSTALL_HINT)

    monkeypatch.setattr(report, "require_matplotlib", unavailable)
    assert cli.main(SMALL) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "pip install 'initcore[plot]'" in err and "--no-plot" in err


@pytest.mark.parametrize("argv, message", [
    (["--widths", "64"], "must be two or more positive integers"),
    (["--widths", "64,32"], "must be distinct and increasing"),
    (["--widths", "64,abc"], "must be two or more positive integers"),
    (["--model", "transformer", "--widths", "63,128"], "multiples of n_heads = 2"),
    (["--steps", "200"], "steps must be an integer in 1..100"),
    (["--init", "mupp"], "unknown strategy 'mupp'"),
    (["--lr", "0"], "must be a positive number"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
    (["--widths", "64,1000000"], "the widths up to 64 fit"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["coord", "--no-plot", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("initcore: error: ")
    assert message in err and "Traceback" not in err
