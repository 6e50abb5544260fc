# Two entry points on a fresh machine: `make demo` (default DAG) and `make test` (the test suite).
# Both create .venv and install everything they need on first use.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo smoke test lint verify report clean-results

$(STAMP): pyproject.toml scripts/setup-venv.sh requirements/cpu.lock
	bash scripts/setup-venv.sh $(VENV) $(PY)
	touch $(STAMP)

demo: $(STAMP)  ## run the default DAG (data -> tokenizer -> training -> evaluation -> fits -> analysis)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

smoke: $(STAMP)  ## the same DAG on config/smoke.yaml (2.5-3.5 minutes on 2 cores, README: Demo timing)
	$(BIN)/snakemake --cores $(CORES) --configfile config/smoke.yaml

test: $(STAMP)  ## the test suite (includes an end-to-end smoke workflow run)
	$(BIN)/python -m pytest -ra

verify: $(STAMP)  ## compare results/ (from `make demo`) with reference/default.json: exit 1 if a number moved
	$(BIN)/tokenscale verify --results results --reference reference/default.json

lint: $(STAMP)  ## snakemake --lint and snakefmt --check on every Snakefile / .smk
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check $$(git ls-files 'Snakefile' '*.smk' '*/Snakefile')

clean-results:
	rm -rf results .snakemake
