# The two set-up commands: `make run` (install + whole pipeline) and `make test` (install + tests).
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# no telemetry from any of the tools, ever
# dvc.yaml commands call `python`: the one in the venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
# pip on this machine lists extra local indexes that warn for every missing package
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install system-deps run lint test test-fast bench serve ui prefect-ui exps

# uv resolves and installs the project's ranges in well under a minute where pip takes about 4
# (the same PyPI packages; a CUDA build of torch is several GB either way)
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q 'uv>=0.5' 2>&1 | $(PIP_QUIET)
	$(BIN)/uv pip install --python $(PY) --quiet -e '.[test]'
	touch $@

# + the page template that lets `dvc plots show` draw without internet (pipeline/plots.py)
install: $(VENV)/.installed
	@$(PY) -m pipeline.plots >/dev/null

# The report's browser test drives Debian's Chromium; as root (CI, fresh machines) install it.
system-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: the browser test needs Debian's chromium and chromium-driver (sudo apt-get install chromium chromium-driver)"; fi; \
	fi

run: install
	$(PY) -m pipeline repro

# ruff: pyflakes, pycodestyle, isort, bugbear (configured in pyproject.toml)
lint: install
	$(BIN)/ruff check .

test: install system-deps
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	for b in benchmarks/bench_*.py; do $(PY) -m benchmarks.$$(basename $$b .py); done

# Scheduled retraining (params.yaml retrain.cron): needs `prefect server start` and PREFECT_API_URL
serve: install
	$(PY) -m pipeline serve

# The MLflow UI over the local store: runs, and the registry's models. One worker and no GenAI
# job runner (8 more processes): four workers take 30 s to answer on two cores, and one person
# browsing needs one.
UI_PORT ?= 5000
ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT) --workers 1

# The Prefect UI over the flow-run history `make run` keeps in .prefect/ (the links it printed)
prefect-ui: install
	$(PY) -m pipeline prefect-ui

# Experiments side by side (after `dvc exp run -S train.epochs=30` and the like): the params that
# differ between them, then rank-1 and mAP of each protocol
EXPS_DROP := Created|untrained|rank5|rank10|rank20|mINP
EXPS_KEEP := ^[a-z_]+\.(rank1|mAP)$$
exps:
	$(BIN)/dvc exp show --no-pager --md --only-changed --drop '$(EXPS_DROP)' --keep '$(EXPS_KEEP)'
