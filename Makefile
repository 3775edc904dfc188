# Two commands from a fresh machine: `make run` (a local 5-node cluster) and `make test`.
# Everything else is set up on demand: the virtualenv, pinned dependencies, helm/kubectl,
# and the Debian tools some tests drive (ringkv.local.system_tools, installed when missing
# as root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODES ?= 5
RF ?= 3
BASE_PORT ?= 8080
DATA_DIR ?= .ringkv-data

.PHONY: all venv run test lint fmt bench bench-churn chaos e2e e2e-churn tools clean screenshots

all: test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,operator,bench]'
	touch $@

venv: $(STAMP)

run: venv
	$(BIN)/ringkv up --nodes $(NODES) --rf $(RF) --base-port $(BASE_PORT) --data-dir $(DATA_DIR)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix .

test: venv tools lint
	$(BIN)/pytest -m "not e2e" -p no:cacheprovider

# helm and kubectl into .tools/bin; the Debian tools the tests need (see
# ringkv.local.system_tools) with apt-get when missing and root.
tools: venv
	$(BIN)/python scripts/fetch_tools.py
	$(BIN)/python -m ringkv.local.system_tools

bench: venv
	$(BIN)/python -m ringkv.bench.suite

# Restarts, kills and membership changes on one loaded 5-node cluster under a checked
# client (issue 12), report in bench/results/; e.g. CHURN_ARGS="--churn-keys 1000000".
bench-churn: venv
	$(BIN)/python -m ringkv.bench.scale --scenarios churn $(CHURN_ARGS)

# Every nemesis for a minute against a fresh local cluster, checked; writes docs/RELIABILITY.md.
chaos: venv
	$(BIN)/python scripts/chaos.py

# The console's browser tests and the dashboard's Prometheus test against fresh local
# clusters, saving the pictures docs/CONSOLE.md and docs/MONITORING.md show.
screenshots: venv tools
	RINGKV_CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -p no:cacheprovider tests/browser
	RINGKV_DASHBOARD_SCREENSHOTS=docs/monitoring $(BIN)/pytest -p no:cacheprovider tests/monitoring/test_dashboard.py

# The chart on a real Kubernetes: ../shared/k8s here, kind where Docker exists; skips
# (and says why) when neither is available.
# The churn steps of tests/e2e/test_kubernetes.py start from E2E_KEYS keys: fewer in
# `make e2e` (every e2e test, within CI's time), issue 12's 20,000 in `make e2e-churn`
# (those steps alone: the run docs/KUBERNETES.md quotes).
E2E_KEYS ?= 5000

e2e: venv tools
	RINGKV_E2E_KEYS=$(E2E_KEYS) $(BIN)/python scripts/e2e.py

e2e-churn: venv tools
	RINGKV_E2E_KEYS=20000 $(BIN)/python scripts/e2e.py tests/e2e/test_kubernetes.py

clean:
	rm -rf $(VENV) .tools $(DATA_DIR) build *.egg-info
