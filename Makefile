# The only entry points: test, lint, experiments, bench, docs. Each works on a fresh clone
# with nothing installed but Python: the first target run creates .venv and installs fbp.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

LOCK   := requirements.lock

.PHONY: test lint experiments bench check clean docs lock

# Installs the exact versions in requirements.lock (pip's constraints file): a fresh machine
# gets the JAX this suite passed with, while pyproject.toml keeps ranges for library users.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[dev,experiments,docs]'
	touch $(STAMP)

# Refresh the lock: upgrade every dependency within pyproject.toml's ranges, run the suite,
# and write the versions it passed with (the lock is left as it was if a test fails).
lock: $(STAMP)
	$(BIN)/python -m pip install -q --upgrade -e '.[dev,experiments,docs]'
	$(BIN)/python -m pytest -q -n auto
	{ sed -n '/^#/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check .

check: $(STAMP)
	$(BIN)/python -m fbp.check

clean:
	rm -rf $(VENV) results site .pytest_cache .ruff_cache .hypothesis

experiments: $(STAMP)
	$(BIN)/python -m experiments

# one experiment alone: `make xor` runs `python -m experiments.xor` (add QUICK=--quick)
EXPERIMENT_TARGETS := xor activations stability gradcheck cost vanishing accumulation graph modes \
                      distributed curvature pieces digits bptt memory transformer
.PHONY: $(EXPERIMENT_TARGETS)
$(EXPERIMENT_TARGETS): $(STAMP)
	$(BIN)/python -m experiments.$@ $(QUICK)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The site, offline and strict (a warning fails): site/index.html.  MkDocs' plugins print a
# banner about MkDocs 2 on every build; the two variables silence it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict
	@echo "open site/index.html (offline); search: $(BIN)/python -m http.server -d site"
