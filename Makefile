# The platform's two commands: `make demo` (runs `make up`, then shows it working) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv test lint up down status demo restart-serving

# The venv is (re)built when requirements.txt or pyproject.toml change.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# The suite (plain pytest deselects the compose marker), then the compose deployment on a real Docker engine.
test: venv
	$(VENV)/bin/pytest -q
	$(MAKE) --no-print-directory test-compose

# The fast lane: every test that needs no service (no PostgreSQL, MLflow, gunicorn or Airflow run is started);
# tests using a service fixture are marked `services` by tests/conftest.py. Its target is a ratio: wall time over
# the median time of testing/calibration.py's fixed workload sampled through the same run (printed last). 2700x
# is 30 s where the workload takes ~11 ms, a quiet machine of the 2-core kind this lane was last measured on.
.PHONY: test-fast
test-fast: venv
	$(VENV)/bin/pytest -q -m "not services" --lane-target 2700

lint: venv
	$(VENV)/bin/ruff check .

# The local platform (stack/): PostgreSQL, MLflow, Airflow, per served model STACK_SERVING_REPLICAS gunicorns and
# an async worker, nginx in front (apt-get installs nginx-light when missing). STACK_EXECUTOR=celery adds Redis
# and two Celery workers. Logs, PID files and data under .local/ (STACK_HOME); ports: see stack/config.py.
up: venv
	$(PY) -m stack.up up

down:
	@if [ -x $(PY) ]; then $(PY) -m stack.up down; else echo "no $(VENV): nothing was started"; fi

status: venv
	$(PY) -m stack.up status

demo: up
	$(PY) -m stack.demo

# Replace the serving replicas one at a time behind the gateway (drain, stop, start, /readyz, back in rotation).
# MODEL=churn restarts one model's replicas only.
restart-serving: venv
	$(PY) -m stack.up restart-serving $(if $(MODEL),--model $(MODEL))

# Safe rollout (stack/rollout.py; README "Safe rollout"): a canary beside the champion at the gateway. Needs
# STACK_CANARY_REPLICAS=1 (or more) at `make up`. MODEL=churn VERSION=7 PERCENT=10.
.PHONY: rollout-status canary canary-share promote abort
rollout-status: venv
	$(PY) -m stack.rollout status

canary: venv
	$(PY) -m stack.rollout start $(MODEL) $(VERSION) --percent $(or $(PERCENT),10)

canary-share: venv
	$(PY) -m stack.rollout share $(MODEL) $(PERCENT)

promote: venv
	$(PY) -m stack.rollout promote $(MODEL)

abort: venv
	$(PY) -m stack.rollout abort $(MODEL) $(if $(REASON),--reason "$(REASON)")

# Regenerate the README's settings table and .env.example from the registry in scoring/settings.py
# (tests/test_settings.py fails when they drift from it).
.PHONY: settings
settings: venv
	$(PY) -m scoring.settings --write

# Async queue benchmark: its own PostgreSQL, MLflow, gunicorn and workers; BENCH_JOBS=20000 single-row jobs.
.PHONY: bench-async
bench-async: venv
	$(PY) bench/async.py

# Batch scoring benchmark: its own PostgreSQL and MLflow registry; naive vs reference vs platform vs 2 shards.
# BATCH_BENCH_ROWS=5000000 for the large run (the naive script is capped at 1,000,000 rows, compared by rows/s).
BATCH_BENCH_ROWS ?= 1000000
.PHONY: bench-batch
bench-batch: venv
	$(PY) bench/batch.py --rows $(BATCH_BENCH_ROWS)

# Online serving benchmark: wrk (apt-get installs it), 32 connections, one row per request; its own PostgreSQL,
# MLflow and model. Ceiling (bare Flask), mlflow models serve --workers 2, live predict, /invocations, lookup.
.PHONY: bench-online
bench-online: venv
	$(PY) bench/online.py

# Fault bench: its own platform; each fault (gunicorn worker kill, PostgreSQL restart, MLflow down while the alias
# moves, async worker kill, batch kill, an analyst's long read during the swap) under wrk load on live and lookup.
.PHONY: bench-faults
bench-faults: venv
	$(PY) bench/faults.py

# The compose deployment for real on this machine's Docker engine (tests/test_compose_deploy.py; `make test` runs
# it last): installs docker.io, debootstrap and the pinned Compose CLI when missing, starts dockerd when none runs
# (and stops only that one), stand-in base images when the official ones cannot be pulled, one deployment driven
# end to end and torn down (down -v).
.PHONY: test-compose deploy-local deploy-demo deploy-down
test-compose: venv
	$(VENV)/bin/pytest -q -m compose tests/test_compose_deploy.py

# The same deployment left running (project msp-local, .env in .local/deploy/), on host ports apart from `make
# up`'s; deploy-demo seeds the demo features (the features role), trains both models and predicts the day.
DEPLOY_GATEWAY_PORT ?= 18000
DEPLOY_AIRFLOW_PORT ?= 18080
DEPLOY_GRPC_PORT ?= 18001
deploy-local: venv
	$(PY) -m testing.compose up --gateway-port $(DEPLOY_GATEWAY_PORT) --airflow-port $(DEPLOY_AIRFLOW_PORT) \
		--grpc-port $(DEPLOY_GRPC_PORT)

deploy-demo: venv
	$(PY) -m testing.compose demo

deploy-down: venv
	$(PY) -m testing.compose down
