# End-to-end room: the e2e suite (e2e/) against a real cluster, kubelet driving the driver.
#
#   make e2e-local          build (cached under .cache/e2e) and start a single-node cluster
#                           here (no kind, no registry), run the suite, tear it down by PID
#   make e2e-local-build    only the builds: Kubernetes binaries, sidecars, images (stops
#                           the dockerd that `make image` started once they are archived)
#   make e2e-local-up       start the local cluster and leave it running
#   make e2e-local-down     stop it
#   make e2e-kind           the same suite on kind (Docker + internet); DRY_RUN=1 prints
#                           the commands instead
#   make e2e-storage        stretch: Kubernetes' External Storage e2e suites
#                           (e2e/storage/testdriver.yaml) on the local cluster
#   make e2e-check          fast static check (also part of `make test`)
#   make e2e-sidecars-test  go test of the stand-in sidecars (the provisioner on
#                           sig-storage-lib-external-provisioner, fake clientset; minutes
#                           to compile client-go, so not part of `make test`)

E2E_CACHE := $(CACHE)/e2e
K8S_VERSION ?= v1.33.13
# Debian packages of the local cluster (containerd and runc also come with docker.io).
E2E_APT := etcd-server containerd runc containernetworking-plugins busybox-static iproute2 \
	openssl curl util-linux

.PHONY: e2e-sidecars-test e2e-local e2e-local-build e2e-local-up e2e-local-down e2e-kind e2e-check e2e-storage

e2e-local-build: install tools-helm image
	@$(MAKE) --no-print-directory install-system EXTRA_APT="$(E2E_APT)"
	e2e/local/build-k8s.sh $(E2E_CACHE)/k8s-$(K8S_VERSION) $(K8S_VERSION)
	@# dockerd (started by `make image`) is needed only to `docker save` the driver image:
	@# stop it once the images are archived, whether or not that worked.
	DRIVER_IMAGE=$(IMAGE) PY=$(PY) e2e/local/build-images.sh; status=$$?; \
	  $(DOCKERD_STOP); exit $$status

e2e-local: e2e-local-build
	DRIVER_IMAGE=$(IMAGE) PY=$(CURDIR)/$(PY) K8S_VERSION=$(K8S_VERSION) e2e/local/run.sh

e2e-local-up: e2e-local-build
	K8S_VERSION=$(K8S_VERSION) e2e/local/cluster.sh up

e2e-local-down:
	e2e/local/cluster.sh down

e2e-storage: e2e-local-build
	WITH_E2E_TEST=1 e2e/local/build-k8s.sh $(E2E_CACHE)/k8s-$(K8S_VERSION) $(K8S_VERSION)
	K8S_VERSION=$(K8S_VERSION) e2e/local/cluster.sh up
	printf 'image:\n  repository: %s\n  tag: "%s"\n' $(firstword $(subst :, ,$(IMAGE))) $(lastword $(subst :, ,$(IMAGE))) >$(E2E_CACHE)/values-image.yaml
	status=0; e2e/local/cluster.sh exec env E2E_VALUES=$(CURDIR)/e2e/local/values.yaml,$(E2E_CACHE)/values-image.yaml \
	  $(CURDIR)/$(PY) -m e2e.storage.run_storage $(E2E_CACHE)/k8s-$(K8S_VERSION)/bin/e2e-storage.test $(E2E_STORAGE_ARGS) \
	  || status=$$?; e2e/local/cluster.sh down; exit $$status

e2e-kind: install
	PY=$(PY) DRIVER_IMAGE=$(IMAGE) e2e/kind/run.sh $(if $(DRY_RUN),--dry-run)

e2e-sidecars-test:
	cd e2e/local/sidecars && nice -n 19 go test -count=1 ./...

e2e-check: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_e2e_static.py
