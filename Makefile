# Kestrel: every command a developer or CI runs. `make help` lists them.
# Variables below can be overridden from the environment or the command line.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?=
TEMPLATE ?= template.yaml
STACK_NAME ?= $(or $(KESTREL_STACK_NAME),kestrel)
# Template parameter overrides ('K=V K=V'): the functions' RedisUrl is an external REDIS_URL,
# else the embedded redis-server `make up` starts (on KESTREL_REDIS_PORT, default 6399).
PARAMS ?= RedisUrl=$(or $(REDIS_URL),redis://127.0.0.1:$(or $(KESTREL_REDIS_PORT),6399)/0)
PYTEST_ARGS ?=
STAMPS := .stamps
SETUP_STAMP := $(STAMPS)/setup
LINT_REGION ?= $(or $(AWS_DEFAULT_REGION),us-east-1)
# Directories mypy checks (those without Python files are left out).
MYPY_DIRS ?= layers/core/python localstack functions training ops tools bench tests

ifneq ($(filter invoke,$(MAKECMDGOALS)),)
ifeq ($(and $(FUNCTION),$(EVENT)),)
$(error usage: make invoke FUNCTION=<LogicalId in $(TEMPLATE)> EVENT=events/<file>.json)
endif
ifeq ($(wildcard $(EVENT)),)
$(error EVENT file not found: $(EVENT))
endif
endif

.PHONY: help setup up down status deploy-local invoke run serve demo test test-unit test-integration test-e2e \
	lint parity train train-propensity propensity-layer promote model-layer retrain-scheduled \
	mlflow-ui bench-emulator bench-engine bench-click-engine \
	bench-api bench-click-api bench-feast bench bench-e2e bench-compare bench-backfill drift redrive migrate-store \
	backfill chaos build \
	deploy-localstack localstack-up localstack-down test-localstack clean

help: ## List every target with what it does
	@echo "Kestrel: make <target> [VAR=value]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

# What make test and make demo need outside the venv (Debian package names; chromium is the
# headless browser of tests/e2e), checked in one place: setup installs them (apt-get, as root)
# and every test target checks its own in its first second, naming the command that fixes it.
SYSTEM_PREREQS := redis-server chromium
CHECK_PREREQS := tools/check_prereqs.sh --venv $(VENV)

setup: $(SETUP_STAMP) ## Create .venv, install pinned deps, redis-server and chromium (idempotent)
	@$(CHECK_PREREQS) --for "make setup" --install $(SYSTEM_PREREQS) venv

$(PY):
	@$(CHECK_PREREQS) --for "make setup" --install $(SYSTEM_PREREQS)
	@py="$(PYTHON)"; \
	if [ -z "$$py" ]; then \
		if command -v python3.11 >/dev/null 2>&1; then py=python3.11; \
		elif command -v python3 >/dev/null 2>&1 && \
			python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then py=python3; \
		else echo "error: Python 3.11+ is needed: install python3.11 (apt-get install -y python3 python3-venv on Debian 12) or set PYTHON=/path/to/python3.11" >&2; exit 1; fi; \
	fi; \
	echo "creating $(VENV) with $$py ($$($$py --version))"; \
	"$$py" -m venv $(VENV)

# The system packages come first (here and in $(PY)): without root, setup stops at once with
# the command to run. A new prerequisite in the script reruns setup, which installs it.
$(SETUP_STAMP): pyproject.toml constraints.txt tools/check_prereqs.sh | $(PY)
	@$(CHECK_PREREQS) --for "make setup" --install $(SYSTEM_PREREQS)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $@
	@echo "setup done: $(VENV) ready, $(SYSTEM_PREREQS) installed"

up: $(SETUP_STAMP) ## Start the embedded AWS emulator and redis-server in the background (.run/)
	$(PY) -m kestrel_local up

down: ## Stop what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m kestrel_local down; else echo "nothing to stop (no $(VENV))"; fi

status: $(SETUP_STAMP) ## Show emulator and Redis (embedded/external, pid, address, healthy) and each queue's depth and oldest age
	@$(PY) -m kestrel_local status

deploy-local: up ## Create the template's streams, queues, bucket and schemas on the running endpoint
	$(PY) -m kestrel_local provision --template $(TEMPLATE) --stack-name $(STACK_NAME) \
		$(if $(PARAMS),--parameter-overrides "$(PARAMS)")
	$(PY) -m kestrel_local register-schemas --stack-name $(STACK_NAME)

invoke: deploy-local ## Run one handler on one event: make invoke FUNCTION=<LogicalId> EVENT=<file>
	$(PY) -m kestrel_local invoke --template $(TEMPLATE) --stack-name $(STACK_NAME) \
		$(if $(PARAMS),--parameter-overrides "$(PARAMS)") $(FUNCTION) --event $(EVENT)

run: deploy-local ## Run the local Lambda runtime (event source mapping pollers) in the foreground
	$(PY) -m kestrel_local run --template $(TEMPLATE) --stack-name $(STACK_NAME) \
		$(if $(PARAMS),--parameter-overrides "$(PARAMS)")

serve: deploy-local ## Serve the scoring API (chalice local) on 127.0.0.1:8000 against the local stack (PORT=8000)
	$(PY) -m kestrel_local serve --template $(TEMPLATE) --stack-name $(STACK_NAME) \
		$(if $(PARAMS),--parameter-overrides "$(PARAMS)") --port $(or $(PORT),8000)

demo: deploy-local ## Backfill 30 simulated days, stream transactions and clicks through the whole stack, print a summary, serve the API + dashboard (RATE=2000 CLICK_RATE=100 DURATION=120 TRAIN=1 PORT=8000)
	@if [ -n "$(TRAIN)" ]; then $(MAKE) --no-print-directory train && \
		$(PY) -m kestrel_training.registry export --dest layers/model --alias challenger; fi
	$(PY) -m kestrel_local.demo --template $(TEMPLATE) --stack-name $(STACK_NAME) \
		--rate $(or $(RATE),2000) --duration $(or $(DURATION),120) \
		$(if $(CLICK_RATE),--click-rate $(CLICK_RATE)) $(if $(PORT),--port $(PORT)) $(ARGS)

# Runs pytest on the tiers that exist. pytest exits 5 when it collects no test: say so plainly.
define run_pytest
	@set +e; paths="$(wildcard $(1))"; \
	if [ -z "$$paths" ]; then echo "no tests: none of $(1) exists"; exit 0; fi; \
	$(PY) -m pytest $$paths $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected in $(1)"; rc=0; fi; \
	if [ $$rc -ne 0 ]; then echo "make $@: FAILED ($(1)), pytest exit code $$rc" >&2; fi; \
	exit $$rc
endef

test: $(SETUP_STAMP) ## Run unit, integration and e2e tests (fixtures start their own emulator, redis-server; e2e needs chromium)
	@$(CHECK_PREREQS) --for "make $@" $(SYSTEM_PREREQS) venv
	$(call run_pytest,tests/unit tests/integration tests/e2e)

test-unit: $(SETUP_STAMP) ## Run unit tests only (no network)
	@$(CHECK_PREREQS) --for "make $@" venv
	$(call run_pytest,tests/unit)

test-integration: $(SETUP_STAMP) ## Run integration tests only (real redis-server + emulator)
	@$(CHECK_PREREQS) --for "make $@" redis-server venv
	$(call run_pytest,tests/integration)

test-e2e: $(SETUP_STAMP) ## Run the end-to-end tests only (live stack + headless Chromium; screenshot in test-artifacts/)
	@$(CHECK_PREREQS) --for "make $@" redis-server chromium venv
	$(call run_pytest,tests/e2e)

lint: $(SETUP_STAMP) ## ruff check, ruff format --check, mypy, cfn-lint and sam validate --lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@dirs=$$(for d in $(MYPY_DIRS); do \
		[ -n "$$(find $$d -name '*.py' -print -quit 2>/dev/null)" ] && echo $$d; done); \
	echo "mypy $$dirs"; $(VENV)/bin/mypy $$dirs
	@test -f $(TEMPLATE) || { echo "error: $(TEMPLATE) not found" >&2; exit 1; }
	$(VENV)/bin/cfn-lint $(TEMPLATE)
	SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$(LINT_REGION) \
		$(VENV)/bin/sam validate --lint --template $(TEMPLATE)

parity: up ## Replay EVENTS (default 100000) simulated events (MODE=fraud or clickstream) through the stack; online == offline?
	$(PY) -m kestrel_training.parity --events $(or $(EVENTS),100000) --mode $(or $(MODE),fraud)

train: $(SETUP_STAMP) ## Simulate if needed, select, train, ONNX + parity check, log and register kestrel-fraud@challenger
	$(PY) -m kestrel_training.train $(if $(SEEDS),--seeds $(SEEDS))

train-propensity: $(SETUP_STAMP) ## Train the purchase-propensity model on simulated clicks: figures beside the simulator's ceiling, register kestrel-propensity@challenger (ARGS='--users 4000 --seed 1')
	$(PY) -m kestrel_training.train_propensity $(ARGS)

propensity-layer: $(SETUP_STAMP) ## Export kestrel-propensity@ALIAS (default champion) to layers/propensity-model/ (and S3 models/propensity/ when MODEL_BUCKET is set)
	$(PY) -m kestrel_training.propensity_registry export --alias $(or $(ALIAS),champion) \
		$(if $(MODEL_BUCKET),--bucket $(MODEL_BUCKET))

promote: $(SETUP_STAMP) ## Move the champion alias to VERSION if it is better (live comparison, or same test set): make promote VERSION=n [FORCE=1]
	@test -n "$(VERSION)" || { echo "usage: make promote VERSION=<n> [FORCE=1]" >&2; exit 1; }
	$(PY) -m kestrel_training.registry promote $(VERSION) $(if $(FORCE),--force)

model-layer: $(SETUP_STAMP) ## Export champion to layers/model/ (and to S3 models/ when MODEL_BUCKET is set)
	$(PY) -m kestrel_training.registry export --dest layers/model $(if $(MODEL_BUCKET),--bucket $(MODEL_BUCKET))

.PHONY: shadow compare-models
shadow: $(SETUP_STAMP) ## Shadow-score the registry's @challenger beside the champion: named in MODEL_BUCKET's pointer (OFF=1 removes it)
	@test -n "$(MODEL_BUCKET)" || { echo "usage: make shadow MODEL_BUCKET=<bucket> [OFF=1]" >&2; exit 1; }
	$(PY) -m kestrel_training.registry shadow --bucket $(MODEL_BUCKET) $(if $(OFF),--off)

compare-models: $(SETUP_STAMP) ## Champion vs shadow-scored challenger on the labelled live window: AP, CP@100, 95% intervals, verdict (ARGS='--since 2018-08-01')
	$(PY) -m kestrel_training.compare_models --stack-name $(STACK_NAME) --template $(TEMPLATE) $(ARGS)

retrain-scheduled: $(SETUP_STAMP) ## Retrain every RETRAIN_EVERY seconds (default a week), promote if better, export the model layer
	$(PY) -m kestrel_training.retrain --every $(or $(RETRAIN_EVERY),604800) $(if $(MODEL_BUCKET),--bucket $(MODEL_BUCKET))

mlflow-ui: $(SETUP_STAMP) ## MLflow UI over mlruns/ on http://127.0.0.1:5001
	MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true $(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5001 \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --default-artifact-root $(CURDIR)/mlruns/artifacts

build: $(SETUP_STAMP) ## Build reproducible Lambda zips (functions, layers) into build/lambda and check Lambda's size limits (ARGS='--arch arm64 --skip-deps')
	$(PY) tools/build_lambda.py $(ARGS)

# LocalStack: Community in host mode without Docker (make localstack-up: pinned, in its own
# .venv-localstack on a Python 3.13, loopback only, state in $(KESTREL_RUN_DIR)/localstack), or
# with Docker `docker compose -f localstack/compose.yml up -d --wait`. LOCALSTACK_PARAMS'
# RedisUrl is the one compose's Lambda containers reach; without Docker, Kestrel's runtime
# runs the functions (AWS_ENDPOINT_URL=$(LOCALSTACK_ENDPOINT) make run) with its own Redis.
LOCALSTACK_ENDPOINT ?= http://127.0.0.1:4566
LOCALSTACK_PARAMS ?= RedisUrl=redis://redis:6379/0 Stage=local
LOCALSTACK_SKIP_TYPES ?=
# auto: deploy the functions only when a Docker daemon answers (docker | none to force)
LOCALSTACK_LAMBDA ?= auto

localstack-up: $(SETUP_STAMP) ## Start LocalStack Community in host mode, no Docker (pinned, .venv-localstack, Python 3.13; LOCALSTACK_ENDPOINT)
	LOCALSTACK_ENDPOINT=$(LOCALSTACK_ENDPOINT) $(PY) -m kestrel_local.localstack_host up

localstack-down: ## Stop the LocalStack that localstack-up started (and only it); the port is left free
	@if [ -x $(PY) ]; then LOCALSTACK_ENDPOINT=$(LOCALSTACK_ENDPOINT) $(PY) -m kestrel_local.localstack_host down; \
		else echo "nothing to stop (no $(VENV))"; fi

deploy-localstack: build ## Deploy build/template.json to LocalStack (without Docker: all but the functions, which make run runs), then the schemas
	AWS_ENDPOINT_URL=$(LOCALSTACK_ENDPOINT) $(PY) -m kestrel_local.localstack_deploy \
		--template build/template.json --stack-name $(STACK_NAME) --lambda $(LOCALSTACK_LAMBDA) \
		--parameter-overrides $(LOCALSTACK_PARAMS) \
		$(foreach type,$(LOCALSTACK_SKIP_TYPES),--skip-type $(type))

test-localstack: $(SETUP_STAMP) ## LocalStack end to end (slow, ~3 min): host mode, deploy, Kestrel's runtime, 1,000 events + poison, redrive; skips only without Python 3.13
	@$(CHECK_PREREQS) --for "make $@" redis-server venv
	$(PY) -m pytest tests/integration/test_localstack_host.py -m slow -p no:cacheprovider $(PYTEST_ARGS)

drift: $(SETUP_STAMP) ## Drift check: last 24 h of the event log vs the model's reference (PSI, KS); table, report, Redis status (ARGS='--end now --fail-on-drift')
	$(PY) -m kestrel_ops drift --stack-name $(STACK_NAME) --template $(TEMPLATE) $(ARGS)

redrive: $(SETUP_STAMP) ## Replay dead-lettered records: make redrive ARGS="--queue on-failure --dry-run"
	$(PY) -m kestrel_ops redrive --stack-name $(STACK_NAME) $(ARGS)

migrate-store: $(SETUP_STAMP) ## Rebuild the online store from the layout before entity logs (REDIS_URL; stop the stream first)
	$(PY) -m kestrel_ops migrate-store $(if $(REDIS_URL),--redis-url $(REDIS_URL))

backfill: $(SETUP_STAMP) ## Load history into Redis as the stream would: make backfill ARGS="--parquet DIR | --event-log [--start T --end T]"
	$(PY) -m kestrel_ops backfill --stack-name $(STACK_NAME) --template $(TEMPLATE) \
		$(if $(REDIS_URL),--redis-url $(REDIS_URL)) $(ARGS)

chaos: $(SETUP_STAMP) ## Chaos run: 100k events with Redis killed, crashes, poison, duplicates, a runtime restart (bench/results/)
	$(PY) bench/chaos.py $(ARGS)

bench-emulator: $(SETUP_STAMP) ## Measure the embedded emulator's Kinesis put/get rates (writes bench/results/)
	$(PY) bench/emulator.py

bench-engine: $(SETUP_STAMP) ## Engine throughput: TransactionsFunction on Kinesis batches, real Redis (bench/results/)
	$(PY) bench/engine.py

bench-click-engine: $(SETUP_STAMP) ## Clickstream engine throughput: ClickstreamFunction (features + propensity) on Kinesis batches, real Redis (bench/results/)
	$(PY) bench/click_engine.py

bench-backfill: $(SETUP_STAMP) ## Backfill throughput: 30 simulated days from Parquet into its own redis-server, beside its pipelined SET ceiling (bench/results/)
	$(PY) bench/backfill.py $(ARGS)

bench-api: $(SETUP_STAMP) ## Scoring API latency over HTTP: open loop, 500 req/s for 60 s, keep-alive (bench/results/)
	$(PY) bench/api.py

bench-click-api: $(SETUP_STAMP) ## Propensity API latency over HTTP (POST /v1/propensity), measured as bench-api: 500 req/s for 60 s (ARGS='--duration 30')
	$(PY) bench/click_api.py $(ARGS)

bench-feast: $(SETUP_STAMP) ## Feast beside Kestrel: a pinned feast[redis] in .venv-feast (installed once), in-process and feast serve p50/p99, own redis-server (bench/results/)
	$(PY) bench/feast.py $(ARGS)

bench: $(SETUP_STAMP) ## Run every benchmark, each time-bounded (~16 min on 2 cores; SIZE=medium|tiny for shorter): bench/results/bench-<UTC>.json + .md
	$(PY) bench/suite.py $(if $(SIZE),--size $(SIZE))

bench-e2e: $(SETUP_STAMP) ## End to end only: sustained events/s (step test + 5-min hold) and freshness, own emulator + redis-server (bench/results/)
	$(PY) bench/e2e.py $(if $(SIZE),--size $(SIZE))

bench-compare: $(SETUP_STAMP) ## Compare the newest bench run with bench/results/baseline-<machine class>.json; exit 1 on a regression of a ratio to its ceiling
	$(PY) bench/compare.py $(ARGS)

clean: ## Stop services, remove .run, caches and build output
	@if [ -x $(PY) ]; then $(PY) -m kestrel_local down || true; \
		$(PY) -m kestrel_local.localstack_host down || true; fi
	rm -rf .run build .aws-sam .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
