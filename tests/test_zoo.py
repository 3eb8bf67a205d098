"""initcore.zoo, initcore.torchvision_shim and scripts/install_zoo.py: the install plan never replaces torch,
the torchvision shim is needed and used only where torchvision's C++ ops are missing, the environment's .pth
applies it in a fresh interpreter without importing torch at start, the factories build offline, and a
missing extra is an ImportError that names it.

The subprocess tests run a fresh interpreter: the shim must act before the first import of torchvision.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from initcore import torchvision_shim as shim
from initcore import zoo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install_zoo.py"


def _script():
    spec = importlib.util.spec_from_file_location("install_zoo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install_zoo = _script()
needs_zoo = pytest.mark.skipif(zoo.missing() is not None and not os.environ.get("INITCORE_REQUIRE_ZOO"),
                               reason=f"{zoo.missing()}")  # under INITCORE_REQUIRE_ZOO (CI) they run, and fail


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=300)


# --- the install plan -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("torch_version, torchvision", [
    ("2.13.0+cpu", "0.28.0"), ("2.13.0", "0.28.0"), ("2.5.1+cu124", "0.20.1"), ("2.2.2", "0.17.2"),
    ("2.14.1", "0.29.1"),  # the pairs of pytorch/vision's compatibility table
])
def test_torchvision_is_the_release_built_for_the_installed_torch(torch_version, torchvision):
    assert install_zoo.torchvision_for(torch_version) == torchvision


@pytest.mark.parametrize("torch_version", ["1.13.1", "2.1.0", "nightly"])
def test_a_torch_outside_the_rule_asks_for_a_spec(torch_version):
    with pytest.raises(install_zoo.UsageError, match=r"give --torchvision SPEC"):
        install_zoo.torchvision_for(torch_version)


@pytest.mark.parametrize("torch_version, old", [("2.2.2", True), ("2.4.1+cpu", True), ("2.5.0", False),
                                                 ("2.13.0+cpu", False)])
def test_a_torch_older_than_transformers_needs_gets_no_zoo(torch_version, old, monkeypatch):
    assert install_zoo.too_old(torch_version) is old
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion(torch_version))
    assert (zoo.missing() or "").startswith(f"torch {torch_version} is older than the 2.5") is old


def test_the_extra_pins_transformers_and_leaves_torch_and_torchvision_out():
    requirements = install_zoo.extra_requirements()
    assert any(r.startswith("transformers==") for r in requirements), requirements
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert "transformers" in names and not names & {"torch", "torchvision"}, requirements


def test_a_missing_extra_is_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project.optional-dependencies]\ndev = ["ruff"]\n')
    with pytest.raises(install_zoo.UsageError, match=r"has no optional-dependencies extra 'zoo'; it has: dev"):
        install_zoo.extra_requirements(tmp_path / "pyproject.toml")


def test_every_step_holds_torch_and_torchvision_comes_without_its_dependencies():
    steps = install_zoo.plan("2.13.0+cpu", ["transformers==5.17.0", "pillow>=9.0"], "torchvision==0.28.0")
    for step in steps:
        assert step[:3] == ["install", "--constraint", "{constraint}"], step  # torch==<installed>, every step
        assert not [a for a in step if a.split("=")[0] == "torch"], step
    assert steps[-1][3:] == ["--no-deps", "torchvision==0.28.0", *install_zoo.PEERS]


@needs_zoo
def test_pip_would_not_touch_torch(tmp_path):
    """pip's own dry run of the script's plan (--dry-run --report) installs no torch; and for the one step
    whose packages require torch (torchvision==0.28.0 requires torch==2.13.0, mup 1.0.0 any torch and
    torchvision, unit-scaling 0.3.5 torch>=2.2), not even into an environment without any of the packages
    (--ignore-installed)."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pip would install:" in done.stdout and "torch==" not in done.stdout.split("pip would install:")[1]
    torch_version, _ = install_zoo.installed_torch(sys.executable)
    step = install_zoo.plan(torch_version, [], f"torchvision=={install_zoo.torchvision_for(torch_version)}")[-1]
    hold = tmp_path / "hold-torch.txt"
    hold.write_text(f"torch=={torch_version}\n")
    found = install_zoo.would_install(sys.executable, [step], str(hold), [], ignore_installed=True)
    assert sorted(name for name, _ in found) == ["mup", "torchvision", "unit-scaling"], found


# --- the torchvision shim -------------------------------------------------------------------------------------


def _clean_slate(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(shim, "_shim_library", None)


@pytest.mark.parametrize("loads", [True, None])  # the extension loads; torchvision is not installed
def test_no_shim_where_the_ops_load_or_torchvision_is_absent(monkeypatch, loads):
    _clean_slate(monkeypatch)
    monkeypatch.setattr(shim, "torchvision_extension_loads", lambda: loads)
    assert zoo.torchvision_ops_shim() == ()
    assert shim._shim_library is None


def test_no_shim_where_the_ops_already_exist(monkeypatch):
    _clean_slate(monkeypatch)
    monkeypatch.setattr(shim, "torchvision_extension_loads", lambda: False)
    monkeypatch.setattr(shim, "_has_op", lambda name: True)
    assert zoo.torchvision_ops_shim() == ()
    assert shim._shim_library is None


def test_no_shim_once_torchvision_is_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", object())
    monkeypatch.setattr(shim, "torchvision_extension_loads", lambda: pytest.fail("must not look"))
    assert zoo.torchvision_ops_shim() == ()


# --- the import hook the environment's .pth installs ----------------------------------------------------------


def test_the_hook_waits_for_torchvision_then_runs_the_shim_once_and_leaves(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    shim.uninstall()
    calls = []
    monkeypatch.setattr(shim, "torchvision_ops_shim", lambda: calls.append(1) or ())
    shim.install()
    shim.install()  # idempotent
    assert sum(isinstance(f, shim.ImportHook) for f in sys.meta_path) == 1
    assert isinstance(sys.meta_path[0], shim.ImportHook)  # before the finder that would import torchvision
    assert importlib.util.find_spec("json") is not None and calls == [] and shim.installed()
    assert sys.meta_path[0].find_spec("torchvision") is None  # finds nothing itself: the ordinary finders do
    assert calls == [1] and not shim.installed()


def test_the_hook_never_breaks_an_import(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    shim.uninstall()
    monkeypatch.setattr(shim, "torchvision_ops_shim", lambda: 1 / 0)
    shim.install()
    assert sys.meta_path[0].find_spec("torchvision") is None and not shim.installed()


def test_the_pth_file_is_one_line_written_whole_and_silent_without_initcore(tmp_path):
    """The file install_zoo writes is the same bytes every time and installs the hook; run where initcore
    cannot be imported (no site-packages: ``-S``) its line is silent, not an error at every start."""
    path = shim.write_pth(tmp_path)
    first = Path(path).read_bytes()
    assert shim.write_pth(tmp_path) == path and Path(path).read_bytes() == first
    assert first.decode() == shim.PTH_LINE and first.count(b"\n") == 1 and first.startswith(b"import ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [shim.PTH_NAME]  # no temporary file left
    done = subprocess.run([sys.executable, "-S", "-c", f"exec(open({path!r}).read()); import sys; "
                           "print('initcore' in sys.modules)"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")
    done = _python(f"from initcore import torchvision_shim as s; s.uninstall(); exec(open({path!r}).read()); "
                   "print(s.installed())")
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr


@needs_zoo
def test_a_fresh_interpreter_imports_torchvision_and_transformers_models(tmp_path):
    """The environment's promise (issue 20): ``python -c "import torchvision; from transformers import
    GPT2LMHeadModel, LlamaForCausalLM"`` exits 0 without importing initcore first, from a folder of the
    user's. Fails in an environment without install_zoo's .pth, where the extension cannot load."""
    command = "import torchvision; from transformers import GPT2LMHeadModel, LlamaForCausalLM"
    assert install_zoo.FRESH_IMPORT == command  # what install_zoo checks after installing
    done = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@needs_zoo
def test_the_environment_starts_with_the_hook_and_without_torch():
    """make's environment starts every interpreter with the hook on sys.meta_path and torch not imported:
    the .pth costs a few standard-library imports, not torch's second."""
    done = _python("import sys; from initcore import torchvision_shim as s; "
                   "print(s.installed(), 'torch' in sys.modules)")
    assert (done.returncode, done.stdout) == (0, "True False\n"), done.stderr


@needs_zoo
def test_the_shim_is_needed_exactly_where_the_extension_cannot_load():
    """Without the shim, ``import torchvision`` fails where its C++ extension does not load (here: a CUDA
    wheel beside the CPU torch) and succeeds where it does; if a torchvision release stops needing the
    shim, this fails and says so."""
    done = _python("""
        from initcore import torchvision_shim, zoo
        torchvision_shim.uninstall()  # the environment's hook, which would apply the shim
        print("LOADS", zoo.torchvision_extension_loads())
        import torchvision
    """)
    loads = "LOADS True" in done.stdout
    if loads:
        assert done.returncode == 0, done.stderr
    else:
        assert "LOADS False" in done.stdout, done.stdout + done.stderr
        assert "operator torchvision::nms does not exist" in done.stderr, (
            "torchvision imports without the shim although its extension does not load: the shim may go\n"
            + done.stderr[-2000:])


@needs_zoo
def test_with_the_shim_both_libraries_import_and_the_models_build_offline(tmp_path):
    """In a fresh interpreter, with HF_HUB_OFFLINE=1 and an empty Hugging Face cache: the GPT-2 factory,
    the first to import transformers (and so torchvision), applies the shim itself; the shim defined nms
    and qnms only if the extension cannot load; torchvision's own guard still refuses its ops; both
    factories build, nothing downloaded."""
    done = _python("""
        import json, sys, torch
        from initcore import zoo
        gpt2, inputs = zoo.gpt2(0)
        assert "torchvision" in sys.modules  # transformers imported it: the shim had to come first
        loads = __import__("torchvision").extension._has_ops()
        shimmed = [n for n in zoo.SHIMMED_SCHEMAS if __import__("initcore.torchvision_shim")
                   .torchvision_shim._shim_library is not None]
        versions = zoo.require()
        import torchvision
        try:
            torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
            nms = "ran"
        except RuntimeError as exc:
            nms = str(exc)
        resnet, x = zoo.resnet18(0, num_classes=10)
        logits = gpt2(**inputs).logits
        print(json.dumps({"loads": loads, "shimmed": shimmed, "again": list(zoo.torchvision_ops_shim()),
                          "extension": zoo.torchvision_extension_loads(), "nms": nms, "versions": versions,
                          "logits": list(logits.shape), "resnet": list(resnet(x).shape)}))
    """, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loads"] == out["extension"]  # torchvision's own verdict is the zoo's
    assert out["shimmed"] == ([] if out["loads"] else ["nms", "qnms"])
    assert out["again"] == []
    if not out["loads"]:
        assert "Couldn't load custom C++ ops" in out["nms"]  # torchvision's own error, not our schema
    assert out["logits"] == [4, 32, 512] and out["resnet"] == [4, 10]
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_a_missing_library_is_an_import_error_naming_the_extra(monkeypatch):
    with pytest.raises(ImportError, match=r"initcore.zoo needs no_such_library_zz \(initcore's optional extra 'zoo'\)"
                                          r": pip install 'initcore\[zoo\]' and then python scripts/install_zoo.py"):
        zoo._import("no_such_library_zz")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    assert zoo.missing().startswith("transformers and torchvision not installed (initcore's optional extra 'zoo')")
