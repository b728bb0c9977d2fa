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

.PHONY: demo test lint bench-zoo bench-influence constraints clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens demo

# Lint of src/ and tests/ runs before the suite (fast: seconds).
lint: $(STAMP)
	$(BIN)/ruff check src tests tools

test: $(STAMP) lint
	$(OFFLINE) $(BIN)/pytest -q

bench-zoo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens bench zoo --out benchmarks/results/zoo.json

# The peer library of the influence benchmark (kronfluence): its metadata asks for torchvision, which breaks this
# torch build, so it is installed without dependencies, plus the ones it really needs (the `peer` extra).
PEER_STAMP := $(VENV)/.peer-installed
$(PEER_STAMP): $(STAMP)
	$(PIP) --no-deps kronfluence
	$(PIP) einconv einops opt-einsum
	touch $(PEER_STAMP)

bench-influence: $(PEER_STAMP)
	$(OFFLINE) $(BIN)/mmlens bench influence --out benchmarks/results/influence.json

# After a deliberate upgrade of the environment: write the tested set back to constraints.txt.
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)
