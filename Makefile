# canarist: two set-up commands on a fresh Debian machine, as root:
#   make demo   a whole model rollout on this machine (SCENARIO=good|latency|accuracy|errors|slo-breach|gpu-cost|
#               bad-signature, SERVING=builtin|triton, SEED=0)
#   make test   lints, type-checks, checks import layers and runs the tests
# Both install what they need themselves (Debian packages, the venv, the Python packages).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
# The Debian packages the tests and the demo run for real (libpython: Triton's Python backend loads it;
# victoria-metrics: the second PromQL store the Prometheus edge is tested against).
SYSTEM_PYTHON ?= /usr/bin/python3
LIBPYTHON := $(shell $(SYSTEM_PYTHON) -c 'import sys; print("libpython%d.%d" % sys.version_info[:2])' 2>/dev/null)
DEBIAN_PACKAGES ?= prometheus haproxy victoria-metrics $(LIBPYTHON)
# What only the tests use: tmux, the terminal `canarist status --watch` is tested in; chromium and its
# driver, the browser the HTML report is checked in; and kubectl (Debian's kubernetes-client unless one
# is on the PATH), through whose plugin discovery `kubectl canarist` is tested.
TEST_DEBIAN_PACKAGES ?= tmux chromium chromium-driver
# Triton's own venv: the tritonserver nvidia-pytriton bundles (CPU), with the numpy < 2 it needs.
TRITON_VENV ?= .triton-venv
TRITON_STAMP := $(TRITON_VENV)/.installed
TRITON_PACKAGES ?= nvidia-pytriton==0.7.0 numpy<2
SCENARIO ?= good
# builtin: the model servers score in-process; triton: each version is served by a real Triton (its
# venv is installed for it, and for the bad-signature scenario, which always runs on Triton).
SERVING ?= builtin
SEED ?= 0
DEMO_OUT ?= canarist-demo

.PHONY: all demo test lint typecheck layers pytest istio-validate debian-deps test-debian-deps venv triton clean

all: test

debian-deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv python3-pip"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

test-debian-deps: debian-deps
	@missing=""; \
	for p in $(TEST_DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | debian-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

$(TRITON_STAMP): | debian-deps
	$(SYSTEM_PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet $(foreach p,$(TRITON_PACKAGES),'$(p)')
	touch $(TRITON_STAMP)

triton: $(TRITON_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check controller tests bench
	$(BIN)/ruff format --check controller tests bench
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy controller bench

layers: $(STAMP)
	$(BIN)/lint-imports

# Two workers (this machine's two cores), a test file to each: the tests that wait on real
# processes overlap with those that compute, and a module's servers start once.
pytest: $(STAMP) $(TRITON_STAMP) test-debian-deps
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

# Every example's rendered objects at every step, checked against Istio's own CRD schemas.
istio-validate: $(STAMP)
	@if [ -x $(SHARED)/tools/istio-validate ]; then \
	  out=$$(mktemp -d); trap 'rm -rf $$out' EXIT; \
	  for f in policies/*.yaml; do \
	    last=$$($(BIN)/canarist steps $$f | grep -c '^  step'); \
	    for k in $$(seq 0 $$((last - 1))); do $(BIN)/canarist render $$f --step $$k > $$out/$$(basename $$f .yaml)-$$k.yaml; done; \
	  done; \
	  $(BIN)/python $(SHARED)/tools/istio-validate $$out/*.yaml; \
	else echo "istio-validate: $(SHARED)/tools/istio-validate not found, skipped (the tests validate with Istio's models)"; fi

test: lint typecheck layers istio-validate pytest

# Real model servers, haproxy, Prometheus and the controller; a report in $(DEMO_OUT)/index.html.
DEMO_NEEDS := $(STAMP)
ifneq ($(filter triton,$(SERVING))$(filter bad-signature,$(SCENARIO)),)
DEMO_NEEDS += $(TRITON_STAMP)
endif
demo: $(DEMO_NEEDS) debian-deps
	$(BIN)/canarist demo --scenario $(SCENARIO) --serving $(SERVING) --seed $(SEED) --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(DEMO_OUT)
