#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubelet with `go build`
# from the k8s.io/kubernetes Go module (no release binaries can be fetched here).
#
# k8s.io/kubernetes points its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# ./staging, which a module download does not contain; a wrapper module replaces each of
# them with its published v0.MINOR.PATCH release, the usual way to depend on
# k8s.io/kubernetes. Output: $OUT/bin (cached: a second run with the binaries present is a
# no-op). Usage: build-k8s.sh OUT_DIR [VERSION]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build-k8s.sh OUT_DIR [VERSION]}
VERSION=${2:-v1.33.13}
BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet"
# WITH_E2E_TEST=1: also the storage e2e runner (e2e/storage/storagee2e, see its comment).
# agnhost (k8s.io/kubernetes/test/images/agnhost) is the image the subPath suites run.
[ -n "${WITH_E2E_TEST:-}" ] && BINS="$BINS e2e-storage.test agnhost"

missing=""
for b in $BINS; do [ -x "$OUT/bin/$b" ] || missing="$missing $b"; done
[ -z "$missing" ] && { echo "kubernetes $VERSION: cached in $OUT/bin"; exit 0; }

mkdir -p "$OUT/src" "$OUT/bin"
cd "$OUT/src"
staging_version="v0.${VERSION#v1.}"
if [ ! -f go.mod ]; then
  go mod init cloudbucket-csi-e2e/k8s-build >/dev/null 2>&1
  GOFLAGS=-mod=mod go mod download k8s.io/kubernetes@"$VERSION"
  modfile=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$VERSION.mod
  go_line=$(sed -n 's/^go \(.*\)/\1/p' "$modfile")
  go mod edit -go="$go_line" -require=k8s.io/kubernetes@"$VERSION"
  # godebug defaults of the real build (e.g. `godebug default=go1.xx`).
  sed -n 's/^godebug \(.*\)$/\1/p' "$modfile" | while read -r kv; do go mod edit -godebug="$kv"; done
  # Every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.N.P`.
  sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\1#p' "$modfile" | while read -r m; do
    go mod edit -replace="$m=$m@$staging_version"
  done
fi

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1"
  ldflags="$ldflags -X $pkg.gitMinor=$(echo "$VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  ldflags="$ldflags -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
pkgs=""
for b in $missing; do
  case $b in
    e2e-storage.test) continue ;;
    agnhost) pkgs="$pkgs k8s.io/kubernetes/test/images/agnhost" ;;
    *) pkgs="$pkgs k8s.io/kubernetes/cmd/$b" ;;
  esac
done
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
if [ -n "$pkgs" ]; then
  # shellcheck disable=SC2086
  nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$OUT/bin/" $pkgs
fi
if [[ " $missing " == *" e2e-storage.test "* ]]; then
  mkdir -p storagee2e
  cp "$HERE/../storage/storagee2e/storage_test.go" storagee2e/
  nice -n 19 go test -c -trimpath -ldflags "$ldflags" -o "$OUT/bin/e2e-storage.test" ./storagee2e
fi
echo "kubernetes $VERSION: built$missing in $(( $(date +%s) - start ))s"
