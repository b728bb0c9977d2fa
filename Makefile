# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Spinning OpenMP waits make torch 5-20x slower when another process shares the cores.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test bench-zoo bench-influence clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens demo

test: $(STAMP)
	$(OFFLINE) $(BIN)/pytest -q

bench-zoo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens bench zoo --out benchmarks/results/zoo.json

# The peer library of the influence benchmark (kronfluence): its metadata asks for torchvision, which breaks this
# torch build, so it is installed without dependencies, plus the ones it really needs (the `peer` extra).
PEER_STAMP := $(VENV)/.peer-installed
$(PEER_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps kronfluence==1.0.1
	$(BIN)/pip install --quiet --disable-pip-version-check einconv==0.1.0 einops==0.8.2 opt-einsum==3.4.0
	touch $(PEER_STAMP)

bench-influence: $(PEER_STAMP)
	$(OFFLINE) $(BIN)/mmlens bench influence --out benchmarks/results/influence.json

clean-venv:
	rm -rf $(VENV)
