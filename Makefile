# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Spinning OpenMP waits make torch 5-20x slower when another process shares the cores.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test bench-zoo clean-venv

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

clean-venv:
	rm -rf $(VENV)
