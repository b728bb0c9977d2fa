# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Spinning OpenMP waits make torch 5-20x slower when another process shares the cores.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test bench-zoo bench-influence mutation planted-bugs clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

# The peer library of the influence benchmark (kronfluence): its metadata asks for torchvision, which breaks this
# torch build, so it is installed without dependencies, plus the ones it really needs (the `peer` extra).
PEER_STAMP := $(VENV)/.peer-installed
$(PEER_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps kronfluence==1.0.1
	$(BIN)/pip install --quiet --disable-pip-version-check einconv==0.1.0 einops==0.8.2 opt-einsum==3.4.0
	touch $(PEER_STAMP)

# The mutation-testing tool of `make mutation` (the `mutation` extra).
MUTATION_STAMP := $(VENV)/.mutation-installed
$(MUTATION_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,mutation]"
	touch $(MUTATION_STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens demo

# The peer comparison (kronfluence agreement test) is part of the suite: the test environment has the peer extra.
test: $(PEER_STAMP)
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

clean-venv:
	rm -rf $(VENV)
