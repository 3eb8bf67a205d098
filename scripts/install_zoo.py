"""Install initcore's ``zoo`` extra (transformers, and the torchvision that matches the installed torch) and
the peers (``mup``, of initcore's muP; ``unit-scaling``, of the precision table's amax) into the Python that
runs this script, without ever replacing its torch.

    python scripts/install_zoo.py             # install; exit 1, loudly, if torch changed anyway
    python scripts/install_zoo.py --dry-run   # pip's plan only (its --dry-run --report); exit 1 if it holds torch
    python scripts/install_zoo.py -q          # as make runs it

Why a script and not ``pip install 'initcore[zoo]'`` with torchvision in the extra: a torchvision wheel pins
the exact torch it was built against (torchvision 0.28.0 requires torch==2.13.0), so an unpinned or
mismatched torchvision makes pip replace the torch in the environment (here the CPU build, with a CUDA
build of about 5.5 GB). So the extra lists transformers (which does not depend on torch) and pillow; this
script picks torchvision 0.(N+15).P for torch 2.N.P, installs it with ``--no-deps``, holds torch to its
installed version with a pip constraint in every step, and checks afterwards that torch is unchanged.

A torchvision wheel from PyPI is a CUDA build: beside a CPU torch its C++ ops cannot load, and its import
fails ("operator torchvision::nms does not exist") unless two schemas are defined first. So the script
writes ``initcore-torchvision-shim.pth`` into the environment's site-packages: at every interpreter start it
puts a hook on ``sys.meta_path`` (no torch imported) that runs ``initcore.torchvision_shim`` at the first
import of torchvision, where the extension cannot load; then a fresh ``python -c "import torchvision; from
transformers import GPT2LMHeadModel"`` works without importing initcore first (the script checks it).
``--torchvision SPEC`` installs another (e.g. ``"torchvision==0.28.0+cpu"`` with
``--pip-arg=--index-url=...`` for a CPU wheel index), for which the hook does nothing.
Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA = "zoo"
# torchvision 0.(N + 15).P is the release built against torch 2.N.P (torch 2.2.2 -> 0.17.2, 2.5.1 -> 0.20.1,
# 2.13.0 -> 0.28.0); the project needs torch >= 2.2 (pyproject), where the rule holds.
TORCHVISION_MINOR_OFFSET = 15
TORCHVISION_PURE_DEPS = ("numpy", "pillow")  # its Requires-Dist besides torch (0.28.0: numpy, torch, pillow)
# The peer that tests/init/test_mup.py checks initcore's muP against. Its metadata requires an unpinned torch
# and torchvision (mup 1.0.0: numpy, pandas, pyyaml, seaborn, torch, torchvision, tqdm), so pip would replace
# torch for it too: it comes with --no-deps, and of the rest what `import mup` needs (pyyaml, tqdm; seaborn
# only for its plots, which initcore draws itself).
# unit-scaling, the peer of the precision table's amax (tests/probe/test_unit_scaling_peer.py), requires torch>=2.2
# besides three pure packages (0.3.5: docstring-parser, einops, tabulate; its "analysis" extra's plots are not
# needed): it too comes with --no-deps.
PEERS = ("mup==1.0.0", "unit-scaling==0.3.5")
PEERS_PURE_DEPS = ("pyyaml", "tqdm", "docstring-parser", "einops", "tabulate")
MIN_TORCH = (2, 5)  # transformers 5.x disables its torch models below torch 2.5 (utils/import_utils.py)
# What a user of the environment runs without importing initcore first: it must work once the script is done.
FRESH_IMPORT = "import torchvision; from transformers import GPT2LMHeadModel, LlamaForCausalLM"


class UsageError(Exception):
    """Bad input or an environment the script cannot work in: one line, exit 2."""


def torchvision_for(torch_version: str) -> str:
    """The torchvision release built against ``torch_version`` ("2.13.0+cpu" -> "0.28.0").

    >>> torchvision_for("2.13.0+cpu"), torchvision_for("2.5.1+cu124"), torchvision_for("2.2.2")
    ('0.28.0', '0.20.1', '0.17.2')
    """
    match = re.match(r"^2\.(\d+)\.(\d+)", torch_version)
    if not match or int(match.group(1)) < 2:
        raise UsageError(f"torch {torch_version}: the zoo pins torchvision for torch 2.N.P with N >= 2 "
                         f"(torchvision 0.(N+{TORCHVISION_MINOR_OFFSET}).P); give --torchvision SPEC")
    return f"0.{int(match.group(1)) + TORCHVISION_MINOR_OFFSET}.{match.group(2)}"


def too_old(torch_version: str) -> bool:
    """Whether ``torch_version`` is below MIN_TORCH, where transformers' GPT-2 would not load.

    >>> too_old("2.2.2"), too_old("2.5.0"), too_old("2.13.0+cpu")
    (True, False, False)
    """
    match = re.match(r"^(\d+)\.(\d+)", torch_version)
    return bool(match) and (int(match.group(1)), int(match.group(2))) < MIN_TORCH


def extra_requirements(pyproject: Path = ROOT / "pyproject.toml", extra: str = EXTRA) -> list[str]:
    """The requirements of ``[project.optional-dependencies] <extra>`` in ``pyproject``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib
    with open(pyproject, "rb") as f:
        extras = tomllib.load(f).get("project", {}).get("optional-dependencies", {})
    if extra not in extras:
        raise UsageError(f"{pyproject} has no optional-dependencies extra {extra!r}; it has: {', '.join(extras)}")
    return list(extras[extra])


def installed_torch(python: str) -> tuple[str, str]:
    """(version, location) of the torch ``python`` imports, from a fresh interpreter."""
    done = subprocess.run([python, "-c", "import torch; print(torch.__version__); print(torch.__path__[0])"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"{python} cannot import torch; set up the environment with its torch first (make test)")
    version, location = done.stdout.split()[-2:]
    return version, location


def plan(torch_version: str, requirements: list[str], torchvision: str) -> list[list[str]]:
    """The pip commands (arguments after ``pip``) that install the extra; ``{constraint}`` stands for a
    constraint file holding ``torch==<torch_version>``, so that no step can change torch: the extra's
    requirements, then torchvision and the peers alone (``--no-deps``: their other requirements that
    matter are pure and installed in the first step)."""
    hold = ["--constraint", "{constraint}"]
    return [["install", *hold, *requirements, *TORCHVISION_PURE_DEPS, *PEERS_PURE_DEPS],
            ["install", *hold, "--no-deps", torchvision, *PEERS]]


def would_install(python: str, steps: list[list[str]], constraint: str, pip_args: list[str],
                  ignore_installed: bool = False) -> list[tuple[str, str]]:
    """(name, version) of every distribution pip would install for ``steps`` (its --dry-run --report);
    with ``ignore_installed``, as into an environment that has none of them."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, step in enumerate(steps):
            report = Path(tmp) / f"report{i}.json"
            extra = ["--ignore-installed"] if ignore_installed else []
            args = [a.replace("{constraint}", constraint) for a in step]
            _pip(python, [*args, *pip_args, *extra, "--dry-run", "--quiet", "--report", str(report)])
            for item in json.loads(report.read_text())["install"]:
                found.append((item["metadata"]["name"], item["metadata"]["version"]))
    return found


def _pip(python: str, args: list[str]) -> None:
    command = [python, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"install_zoo: pip failed (exit {done.returncode}): {' '.join(command)}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print what pip would install; exit 1 if torch")
    parser.add_argument("--ignore-installed", action="store_true",
                        help="with --dry-run: plan as for an environment without the zoo's packages")
    parser.add_argument("--torchvision", metavar="SPEC", help="the torchvision requirement (default: the one "
                        "built against the installed torch, torchvision==0.(N+15).P)")
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for every pip install (repeatable), e.g. --pip-arg=--no-index")
    parser.add_argument("-q", "--quiet", action="store_true", help="pip -q, as make's other installs")
    args = parser.parse_args(argv)
    if args.quiet:
        args.pip_arg.append("-q")
    python = sys.executable
    try:
        before = installed_torch(python)
        if too_old(before[0]):
            print(f"install_zoo: torch {before[0]} is older than the {'.'.join(map(str, MIN_TORCH))} that transformers "
                  f"needs: the zoo is not installed and the real models are skipped")
            return 0
        torchvision = args.torchvision or f"torchvision=={torchvision_for(before[0])}"
        steps = plan(before[0], extra_requirements(), torchvision)
    except UsageError as exc:
        print(f"install_zoo: {exc}", file=sys.stderr)
        return 2
    print(f"install_zoo: torch {before[0]} at {before[1]} stays; installing {' '.join(extra_requirements())} "
          f"and {torchvision} (--no-deps)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        constraint = os.path.join(tmp, "hold-torch.txt")
        Path(constraint).write_text(f"torch=={before[0]}\n")
        if args.dry_run:
            found = would_install(python, steps, constraint, args.pip_arg, args.ignore_installed)
            print("install_zoo: pip would install:", ", ".join(f"{n}=={v}" for n, v in found) or "nothing")
            touched = [f"{n}=={v}" for n, v in found if _canonical(n) == "torch"]
            if touched:
                print(f"install_zoo: *** the plan would replace torch {before[0]} with {touched[0]}", file=sys.stderr)
                return 1
            from initcore.torchvision_shim import PTH_NAME

            print(f"install_zoo: would write {Path(sysconfig.get_path('purelib')) / PTH_NAME}")
            return 0
        for step in steps:
            _pip(python, [a.replace("{constraint}", constraint) for a in step] + args.pip_arg)
    after = installed_torch(python)
    if after != before:
        print(f"install_zoo: *** TORCH WAS REPLACED: torch {before[0]} at {before[1]} is now torch {after[0]} at "
              f"{after[1]}. Rebuild the environment (make clean; make test) and report this.", file=sys.stderr)
        return 1
    from initcore import torchvision_shim  # installed before the zoo (make: pip install -e .)

    pth = torchvision_shim.write_pth(sysconfig.get_path("purelib"))
    print(f"install_zoo: wrote {pth} (torchvision's import hook)")
    for code in (FRESH_IMPORT, "import initcore.zoo as z; print(z.require())"):
        done = subprocess.run([python, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"install_zoo: *** installed, but `python -c '{code}'` fails:\n{done.stderr}", file=sys.stderr)
            return 1
    print(f"install_zoo: torch {after[0]} unchanged; {done.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
