#!/usr/bin/env bash
# make e2e-local: build (cached), start the local cluster, install the chart, run the suite,
# tear everything down by PID. Prints how long the build and the run took.
#   E2E_PYTEST_ARGS  extra pytest arguments, split on spaces (e.g. "-x --lf")
#   E2E_K            a pytest -k expression, passed as one argument (e.g. "static or inline")
#   E2E_KEEP=1       leave the cluster up afterwards (`make e2e-local-down` stops it)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
E2E_CACHE=${E2E_CACHE:-$ROOT/.cache/e2e}
K8S_VERSION=${K8S_VERSION:-v1.33.13}
DRIVER_IMAGE=${DRIVER_IMAGE:?DRIVER_IMAGE is required}
PY=${PY:-$ROOT/.venv/bin/python}

t0=$(date +%s)
"$HERE/build-k8s.sh" "$E2E_CACHE/k8s-$K8S_VERSION" "$K8S_VERSION"
# The driver image was exported by `make e2e-local-build`, which stopped its dockerd again:
# only the dockerd-free images are (re)built here.
NO_DRIVER_IMAGE=1 PY=$PY "$HERE/build-images.sh"
[ -f "$E2E_CACHE/images/driver.tar" ] || {
  echo "e2e-local: no driver image in $E2E_CACHE/images/driver.tar; run make e2e-local-build" >&2
  exit 1
}
t1=$(date +%s)

cleanup() {
  if [ -z "${E2E_KEEP:-}" ]; then "$HERE/cluster.sh" down || true; fi
}
trap cleanup EXIT
"$HERE/cluster.sh" up
t2=$(date +%s)

repo=${DRIVER_IMAGE%:*}
tag=${DRIVER_IMAGE##*:}
printf 'image:\n  repository: %s\n  tag: "%s"\n' "$repo" "$tag" >"$E2E_CACHE/values-image.yaml"
status=0
"$HERE/cluster.sh" exec env \
  E2E_OIDC_ISSUER=https://10.96.0.1 E2E_OIDC_CA="$E2E_CACHE/run/pki/ca.crt" \
  E2E_S3_HOST=10.100.0.1 E2E_VALUES="$HERE/values.yaml,$E2E_CACHE/values-image.yaml" \
  "$PY" -m pytest -p no:cacheprovider -v -rA --timeout=900 e2e ${E2E_K:+-k "$E2E_K"} \
  ${E2E_PYTEST_ARGS:-} \
  < /dev/null || status=$?
t3=$(date +%s)
echo "e2e-local: build $((t1 - t0))s, cluster up $((t2 - t1))s, suite $((t3 - t2))s, exit $status"
exit $status
