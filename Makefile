# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
# `make scale-demo`: the scale-out reference deployment (README "Scaling out"), on loopback addresses.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Each instrumentor under instrumentors/ is its own distribution, installed beside the core.
INSTRUMENTORS := $(wildcard instrumentors/*/pyproject.toml)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(INSTRUMENTORS) | cksum | cut -d' ' -f1)

.PHONY: demo scale-demo test lint bench tools clean

$(STAMP): pyproject.toml $(INSTRUMENTORS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' $(foreach p,$(INSTRUMENTORS),-e $(dir $(p)))
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/python -m chat_turbo_metrics demo

scale-demo: $(STAMP) tools
	$(BIN)/python scripts/scale_demo.py

tools:
	@scripts/ensure-tools

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# One worker per core (pytest-xdist). loadgroup hands out tests one at a time, in the order of the root conftest.py
# (longest first), to whichever worker is free: the run ends on short tests, not on one worker's long tail.
test: $(STAMP) tools lint
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

bench: $(STAMP)
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
