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

.PHONY: all venv run test lint fmt bench chaos e2e tools clean screenshots

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
e2e: venv tools
	$(BIN)/python scripts/e2e.py

clean:
	rm -rf $(VENV) .tools $(DATA_DIR) build *.egg-info
