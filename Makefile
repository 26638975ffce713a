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

# `make demo` installs only what the demo needs: the core, the instrumentors it uses and its web framework (the
# `demo` extra), under a stamp of its own; after `make test` (a superset) that install is used as it is.
DEMO_INSTRUMENTORS := instrumentors/http instrumentors/database instrumentors/system
DEMO_STAMP := $(VENV)/.demo-installed-$(shell cat pyproject.toml $(INSTRUMENTORS) | cksum | cut -d' ' -f1)

# The four local distributions are built with one hatchling installed in the venv rather than in four isolated
# build environments: half the time of a first run.
$(DEMO_STAMP): pyproject.toml $(INSTRUMENTORS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'hatchling>=1.24' editables
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[demo]' $(foreach d,$(DEMO_INSTRUMENTORS),-e $(d))
	rm -f $(VENV)/.demo-installed-* && touch $@

demo: $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))
	$(BIN)/python -m chat_turbo_metrics demo $(DEMO_ARGS)

scale-demo: $(STAMP) tools
	$(BIN)/python scripts/scale_demo.py

tools:
	@scripts/ensure-tools

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Two pytest-xdist workers per core: about half of the suite's wall time is tests waiting on real servers, fault
# timeouts and sleeps (a 40 s deployment, a 14 s demo run), and the other workers run while they wait; the whole
# suite needs some 6.5 minutes of CPU. loadgroup hands out tests a few at a time, in the order of the root
# conftest.py (longest first), to whichever worker is free, a module that shares a slow fixture as one unit: the run
# ends on short tests, not on one worker's long tail. `make test TEST_WORKERS=2` to change.
TEST_WORKERS ?= $(shell echo $$(( 2 * $$(nproc 2>/dev/null || echo 1) )))
# Some images set PYTHONDONTWRITEBYTECODE: every test subprocess would then compile this package from source again
# (0.2 s of CPU each, several hundred of them) and every xdist worker would rewrite every test module's asserts.
test: $(STAMP) tools lint
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
