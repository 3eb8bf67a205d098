"""initcore.report.page: the page opens from disk with every figure loaded (headless Chromium where Debian's
chromium is installed; the HTML and every link validated everywhere), a summary at the top says what passed
against what, and files are written atomically."""

from __future__ import annotations

import html
import html.parser
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pandas as pd
import pytest

from initcore import report
from initcore.report import page

from .conftest import SEED

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(html.parser.HTMLParser):
    """Tags balanced (void elements aside), ids unique, every src and href collected."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []
        self.links: list[tuple[str, str]] = []  # (tag, target)
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append((tag, attrs[key]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
        else:
            self.stack.pop()


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and the chunk's CRC."""
    assert data.startswith(PNG_SIGNATURE)
    length, kind = struct.unpack(">I4s", data[8:16])
    body = data[16:16 + length]
    (crc,) = struct.unpack(">I", data[16 + length:20 + length])
    assert kind == b"IHDR" and zlib.crc32(kind + body) == crc
    return struct.unpack(">II", body[:8])


def test_the_html_is_well_formed_and_every_link_resolves(built):
    text = (built.out / "index.html").read_text()
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.problems == [] and checker.stack == []
    assert len(checker.ids) == len(set(checker.ids))
    for _, target in checker.links:
        if target.startswith("#"):
            assert target[1:] in checker.ids, target  # every in-page link has its anchor
            continue
        assert "://" not in target and not target.startswith("/"), target  # relative: opens with no server
        path = built.out / target
        assert path.is_file(), target
        if target.endswith(".csv"):
            assert len(pd.read_csv(path)) > 0
    assert checker.images and all(img.get("alt") for img in checker.images)
    from matplotlib.image import imread

    for img in checker.images:
        data = (built.out / img["src"]).read_bytes()
        width, height = _png_size(data)
        assert width > 50 and height > 50
        pixels = imread(built.out / img["src"])  # decodes whole
        assert pixels.shape[:2] == (height, width) and pixels.std() > 0  # not a blank canvas


def test_the_summary_comes_first_and_counts_the_checks(built):
    text = (built.out / "index.html").read_text()
    assert text.index("<h2 id='summary'>") < text.index("<h2>Figures") < text.index("<img")
    results = re.findall(r"<td class='(pass|fail|info)'>", text)
    decided = [r for r in results if r != "info"]
    passed = decided.count("pass")
    assert f"<b>{passed} of {len(decided)} checks passed</b>" in text
    # the failure modes are diagnosed and cured (8 checks), the depth runs sit in their baselines' band
    assert len(decided) >= 9 and "fail" not in results
    summary = text[text.index("<h2 id='summary'>"):text.index("<h2>Figures")]
    for against in ("the bench's baseline band", "mean-field theory", "initcore.diagnose: dead_relu found",
                    "theory.residual_variance", "logit std = d sqrt(Var(W_q) Var(W_k)) m2",
                    "slope 0 for 1/fan_in scaling"):
        assert html.escape(against) in summary, against
    assert f"seed {SEED}" in text


def test_a_run_outside_its_baseline_band_fails_in_the_summary(built, tmp_path):
    """The same report with one stored mean moved far off: that run's check fails, and the page says so."""
    from initcore import baselines

    shifted = tmp_path / "baselines"
    shifted.mkdir()
    table = baselines.load(built.baselines / "depth_init.csv")
    first = table.index[(table["statistic"] == "act_std")][0]
    table.loc[first, "mean"] += 1.0  # e^1: 2.7x the seeds' act_std, far outside 10 spreads
    baselines.update(shifted / "depth_init.csv", table)
    runs = report.ReportRuns(depth=built.runs.depth, xavier={}, activation={}, transformer={}, depth_scaling={},
                             attention={}, mha_trap={}, width={}, failure={})
    depth = report.sections._depth_sections(runs, SEED, report.SeedBands(shifted), [])
    check = depth[0].checks[0]
    assert check.passed is False and f"{table.loc[first, 'layer']} act_std" in check.detail
    assert "<td class='fail'>FAIL</td>" in page.summary(depth)
    same = report.sections._depth_sections(runs, SEED, report.SeedBands(built.baselines), [])
    assert same[0].checks[0].passed is True


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_dom(index: Path, profile: Path) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                           "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None or not sys.platform.startswith("linux"),
                    reason="needs Debian's chromium (apt-get install -y chromium)")
def test_headless_chromium_loads_every_figure(built, tmp_path):
    n = len(list(built.out.glob("*.png")))
    dom = _chromium_dom(built.out / "index.html", tmp_path / "profile")
    assert f'data-images="{n} images, {n} loaded"' in dom
    assert '<p class="broken">' not in dom
    broken = tmp_path / "broken"
    shutil.copytree(built.out, broken)
    (broken / "width.png").unlink()
    dom = _chromium_dom(broken / "index.html", tmp_path / "profile2")
    assert f'data-images="{n} images, {n - 1} loaded"' in dom
    assert '<p class="broken">1 figure(s) did not load: width.png. Run initcore report again.</p>' in dom


def _wide_page(out: Path) -> Path:
    """A page whose table has 30 columns of long names, a trace's width and more."""
    table = pd.DataFrame({f"a_rather_long_statistic_name_{i}": [1.0 / (i + 1)] * 3 for i in range(30)})
    section = page.Section("wide", "A wide table", "Thirty columns.", table, None)
    index = page.write([section], out)
    # after load, the page states how wide it lays out: wider than the window means it runs off the page
    probe_script = ("<script>window.addEventListener('load', function () {document.body.setAttribute("
                    "'data-width', document.documentElement.scrollWidth);});</script></body>")
    index.write_text(index.read_text().replace("</body>", probe_script))
    return index


def test_every_table_scrolls_inside_the_page(tmp_path):
    text = _wide_page(tmp_path / "out").read_text()
    tables = text.count("<table")
    assert tables >= 2 and text.count("<div class='scroll'><table") == tables
    assert "div.scroll{overflow-x:auto" in text


@pytest.mark.skipif(CHROMIUM is None or not sys.platform.startswith("linux"),
                    reason="needs Debian's chromium (apt-get install -y chromium)")
def test_a_wide_table_does_not_run_off_a_1400_px_page(tmp_path):
    # the trace's table of a Hugging Face GPT-2 ran to ~2000 px on a 1400 px window before tables scrolled
    index = _wide_page(tmp_path / "out")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900",
                           "--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
                          capture_output=True, text=True, timeout=120)
    width = int(re.search(r'data-width="(\d+)"', done.stdout).group(1))
    assert width <= 1400, f"the page lays out {width} px wide in a 1400 px window"


def test_without_matplotlib_nothing_is_run_or_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(report, "collect", lambda *a, **k: pytest.fail("collected without matplotlib"))
    with pytest.raises(report.PlottingUnavailable, match=re.escape("pip install 'initcore[plot]'")):
        report.write_report(tmp_path / "out")
    assert not (tmp_path / "out").exists()
