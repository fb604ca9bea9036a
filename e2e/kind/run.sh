#!/usr/bin/env bash
# make e2e-kind: the e2e suite on a kind cluster (machines with Docker and internet access).
# Creates the cluster, builds and `kind load`s the driver image, runs SeaweedFS in the
# cluster, runs the suite (which `helm install`s the chart) and deletes the cluster.
#   run.sh --dry-run   print the commands instead of running them
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
DRY_RUN=""
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
CLUSTER=${KIND_CLUSTER:-cbe2e}
DRIVER_IMAGE=${DRIVER_IMAGE:-cloudbucket-csi:$(sed -n 's/^__version__ = "\(.*\)"/\1/p' driver/__init__.py)}
TEST_IMAGE=${E2E_TEST_IMAGE:-busybox:1.36}
KIND=${KIND:-kind}
DOCKER=${DOCKER:-docker}
KUBECTL=${KUBECTL:-kubectl}
HELM=${HELM:-helm}
PY=${PY:-.venv/bin/python}
KUBECONFIG_FILE=${KUBECONFIG_FILE:-$ROOT/.cache/e2e/kind.kubeconfig}
S3_LOCAL_PORT=${S3_LOCAL_PORT:-18333}

run() {
  echo "+ $*"
  [ -n "$DRY_RUN" ] || "$@"
}

cleanup() {
  [ -n "${PF_PID:-}" ] && kill "$PF_PID" 2>/dev/null || true
  [ -n "${KEEP_CLUSTER:-}" ] || run "$KIND" delete cluster --name "$CLUSTER"
}
trap cleanup EXIT

mkdir -p "$(dirname "$KUBECONFIG_FILE")"
run "$KIND" create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" \
  --kubeconfig "$KUBECONFIG_FILE" --wait 5m
export KUBECONFIG=$KUBECONFIG_FILE
run "$DOCKER" build -t "$DRIVER_IMAGE" .
run "$DOCKER" pull "$TEST_IMAGE"
run "$KIND" load docker-image --name "$CLUSTER" "$DRIVER_IMAGE" "$TEST_IMAGE"

# The S3 server, its STS trusting the cluster's issuer.
if [ -n "$DRY_RUN" ]; then
  issuer='$(kubectl get --raw /.well-known/openid-configuration | jq -r .issuer)'
else
  issuer=$("$KUBECTL" get --raw /.well-known/openid-configuration | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["issuer"])')
fi
run "$KUBECTL" create clusterrolebinding cbe2e-oidc-discovery \
  --clusterrole=system:service-account-issuer-discovery --group=system:unauthenticated
run "$KUBECTL" apply -f "$HERE/seaweedfs.yaml"
iam=$ROOT/.cache/e2e/kind-iam.json
echo "+ $PY -m e2e.kind.iam_config $issuer > $iam"
[ -n "$DRY_RUN" ] || "$PY" -m e2e.kind.iam_config "$issuer" >"$iam"
run "$KUBECTL" -n e2e-s3 create configmap seaweedfs-iam --from-file=iam.json="$iam"
run "$KUBECTL" -n e2e-s3 rollout status deployment/seaweedfs --timeout=5m
echo "+ $KUBECTL -n e2e-s3 port-forward svc/seaweedfs $S3_LOCAL_PORT:8333 &"
if [ -z "$DRY_RUN" ]; then
  "$KUBECTL" -n e2e-s3 port-forward svc/seaweedfs "$S3_LOCAL_PORT:8333" >/dev/null 2>&1 &
  PF_PID=$!
fi

run env E2E_S3_ENDPOINT=http://seaweedfs.e2e-s3.svc.cluster.local:8333 \
  E2E_S3_LOCAL_ENDPOINT="http://127.0.0.1:$S3_LOCAL_PORT" \
  E2E_S3_ACCESS_KEY=cbe2e-key E2E_S3_SECRET_KEY=cbe2e-secret \
  E2E_HELM="$HELM" E2E_VALUES="$HERE/values.yaml" E2E_TEST_IMAGE="$TEST_IMAGE" \
  E2E_NODE_EXEC="$DOCKER exec $CLUSTER-control-plane" \
  "$PY" -m pytest -p no:cacheprovider -v -rA --timeout=900 e2e ${E2E_PYTEST_ARGS:-}
