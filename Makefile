# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever the package metadata or the tested set changes.
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Spinning OpenMP waits make torch 5-20x slower when another process shares the cores.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test lint bench-zoo bench-influence mutation planted-bugs constraints clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	touch $(STAMP)

# The peers of the influence benchmark (kronfluence, and cleanlab for confident learning): kronfluence's metadata
# asks for torchvision, which breaks this torch build, so it is installed without dependencies, plus the ones it
# really needs (the `peer` extra).
PEER_STAMP := $(VENV)/.peer-installed
$(PEER_STAMP): $(STAMP)
	$(PIP) --no-deps kronfluence
	$(PIP) einconv einops opt-einsum cleanlab
	touch $(PEER_STAMP)

# The mutation-testing tool of `make mutation` (the `mutation` extra).
MUTATION_STAMP := $(VENV)/.mutation-installed
$(MUTATION_STAMP): $(STAMP)
	$(PIP) -e ".[test,mutation]"
	touch $(MUTATION_STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens demo

# Lint, format check and type check run before the suite (fast: seconds).
lint: $(STAMP)
	$(BIN)/ruff check src tests tools
	$(BIN)/ruff format --check src tests tools
	$(BIN)/mypy

# The peer comparison (kronfluence agreement test) is part of the suite: the test environment has the peer extra.
test: $(PEER_STAMP) lint
	$(OFFLINE) $(BIN)/pytest -q

# Mutation score of the methods' core modules -> benchmarks/results/mutation.json (CPU-heavy: niced, one mutant at
# a time; `python benchmarks/mutation.py --modules align/masking.py` for one module).
mutation: $(MUTATION_STAMP)
	$(OFFLINE) nice -n 10 $(BIN)/python benchmarks/mutation.py

# Plant issue 21's four bugs one at a time in a temporary copy of src/ and check a named test kills each.
planted-bugs: $(STAMP)
	$(OFFLINE) nice -n 10 $(BIN)/python benchmarks/planted_bugs.py

bench-zoo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens bench zoo --out benchmarks/results/zoo.json

bench-influence: $(PEER_STAMP)
	$(OFFLINE) $(BIN)/mmlens bench influence --out benchmarks/results/influence.json

# After a deliberate upgrade of the environment: write the tested set back to constraints.txt.
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)
