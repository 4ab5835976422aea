# The only entry points: test, lint, experiments, bench. Each works on a fresh clone
# with nothing installed but Python: the first target run creates .venv and installs fbp.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint experiments bench check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,experiments]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check .

check: $(STAMP)
	$(BIN)/python -m fbp.check

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .hypothesis

experiments: $(STAMP)
	$(BIN)/python -m experiments

# one experiment alone: `make xor` runs `python -m experiments.xor` (add QUICK=--quick)
EXPERIMENT_TARGETS := xor activations stability gradcheck cost vanishing accumulation graph modes \
                      distributed curvature transformer
.PHONY: $(EXPERIMENT_TARGETS)
$(EXPERIMENT_TARGETS): $(STAMP)
	$(BIN)/python -m experiments.$@ $(QUICK)

bench: $(STAMP)
	$(BIN)/python -m benchmarks
