# Two commands on a fresh machine: `make bench` and `make test`. Each sets up .venv when it is missing.
# After that, run anything from .venv: `source .venv/bin/activate`, then `pytest bench ...`, `initcore ...`
# (.venv has its own pytest, ruff and initcore scripts even where the base Python has pytest), or pass
# pytest options through make: `make bench PYTEST_ARGS="--benchmark-skip -k depth"`.
#   PYTHON=...   the interpreter that makes .venv (its site-packages stay visible, so a torch it has is kept)
#   TORCH=...    what to pip-install when no torch is importable (default: the CPU build torch==2.13.0;
#                an unpinned `torch` would pull a CUDA build of about 5.5 GB)
#                e.g. make test TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
# PYTHON or TORCH given on the command line (or in the environment) is a request: if .venv was made
# otherwise (recorded in .venv/.initcore-made-with), make says so and rebuilds .venv with what was asked,
# installing exactly that torch into it. Without a request an existing .venv is used as it is.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
RECORD := $(VENV)/.initcore-made-with
PYTEST_ARGS ?=
# Scripts .venv must have itself: pip leaves them out when the base Python already has the package.
SCRIPTS := pytest ruff

requested = $(filter command line environment,$(origin $(1)))

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.PHONY: setup test bench timings lint report clean

# Runs on every make, cheaply (no interpreter is started unless something is to be done).
setup:
	@python_requested='$(call requested,PYTHON)'; torch_requested='$(call requested,TORCH)'
	rebuild=""
	if [ -f "$(RECORD)" ]; then
	  if [ -n "$$python_requested" ] && ! grep -qxF 'PYTHON=$(PYTHON)' "$(RECORD)"; then rebuild="PYTHON=$(PYTHON)"; fi
	  if [ -n "$$torch_requested" ] && ! grep -qxF 'TORCH=$(TORCH)' "$(RECORD)"; then rebuild="$${rebuild:+$$rebuild }TORCH=$(TORCH)"; fi
	fi
	if [ -n "$$rebuild" ]; then
	  echo "*** make: you asked for $$rebuild, but $(VENV) was made with:" >&2
	  sed 's/^/***     /' "$(RECORD)" >&2
	  echo "*** make: rebuilding $(VENV)" >&2
	  rm -rf "$(VENV)"
	fi
	# A newer pyproject.toml or install script (which writes .venv's torchvision import hook) redoes the installs.
	if [ -f "$(RECORD)" ] && [ ! pyproject.toml -nt "$(RECORD)" ] && [ ! scripts/install_zoo.py -nt "$(RECORD)" ]; then
	  exit 0
	fi
	test -x "$(BIN)/python" || $(PYTHON) -m venv --system-site-packages "$(VENV)"
	if [ -n "$$torch_requested" ]; then
	  echo "installing $(TORCH) into $(VENV)"
	  "$(BIN)/python" -m pip install -q --ignore-installed $(TORCH)
	  torch_from='TORCH=$(TORCH)'
	elif "$(BIN)/python" -c "import torch" 2>/dev/null; then
	  torch_from="TORCH=(not installed: kept the torch $(VENV) could import)"
	else
	  echo "no torch importable: installing $(TORCH) into $(VENV)"
	  "$(BIN)/python" -m pip install -q $(TORCH)
	  torch_from='TORCH=$(TORCH)'
	fi
	"$(BIN)/python" -m pip install -q -e ".[dev]"
	"$(BIN)/python" scripts/install_zoo.py -q  # the real models' extra; torchvision matched to torch, which stays,
	# and importable in a fresh interpreter (a .pth hook in $(VENV), see initcore/torchvision_shim.py)
	for script in $(SCRIPTS); do
	  if [ ! -x "$(BIN)/$$script" ]; then
	    version=$$("$(BIN)/python" -c "import importlib.metadata as m; print(m.version('$$script'))")
	    "$(BIN)/python" -m pip install -q --ignore-installed --no-deps "$$script==$$version"
	  fi
	done
	for script in $(SCRIPTS) initcore; do
	  test -x "$(BIN)/$$script" || { echo "make: $(BIN)/$$script is missing" >&2; exit 1; }
	done
	torch_is=$$("$(BIN)/python" -c "import torch; print(f'torch {torch.__version__} at {torch.__path__[0]}')")
	printf 'PYTHON=%s\n%s\n%s\n' '$(PYTHON)' "$$torch_from" "$$torch_is" > "$(RECORD).tmp"
	mv "$(RECORD).tmp" "$(RECORD)"
	echo "$(VENV): $$torch_is"

test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m pytest bench $(PYTEST_ARGS)

timings: setup
	$(BIN)/python -m pytest bench --benchmark-only $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check initcore tests bench

report: setup
	$(BIN)/initcore report --out report

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks report
