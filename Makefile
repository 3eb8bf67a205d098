# Two commands on a fresh machine: `make bench` and `make test`. Each sets up .venv when it is missing.
#   PYTHON=...   the interpreter that makes .venv (its site-packages stay visible, so a torch it has is kept)
#   TORCH=...    what to pip-install when no torch is importable (default: the CPU build torch==2.13.0)
#                e.g. make test TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.initcore-installed
PYTEST_ARGS ?=

.PHONY: setup test bench timings lint report clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null && echo "keeping torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')" \
		|| $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pytest bench $(PYTEST_ARGS)

timings: $(STAMP)
	$(BIN)/python -m pytest bench --benchmark-only $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check initcore tests bench

report: $(STAMP)
	$(BIN)/initcore report --out report

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks report
