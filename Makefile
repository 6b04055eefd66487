# Each target sets up .venv itself; a second run skips the install (stamp file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medimg-installed
TORCH_VERSION := 2.13.0

.PHONY: venv demo test test-all bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test,codecs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medimg demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_scan.py
	$(PY) tests/benchmarks/bench_qubrats.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
