#!/usr/bin/env bash
# Images for the local cluster, as docker-archive tarballs in $IMAGES (cluster.sh imports
# them into containerd). Cached: an image is rebuilt only when its tarball is missing.
#   pause, csi-node-driver-registrar, livenessprobe, csi-provisioner: static Go binaries
#     (e2e/local/sidecars, see its README for why these are stand-ins) in one-layer images;
#   busybox: the workload image of the suite (Debian's busybox-static);
#   the driver: `make image` (dockerd from Debian, see mk/chart.mk), then `docker save`
#     (skipped with NO_DRIVER_IMAGE=1).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
E2E_CACHE=${E2E_CACHE:-$ROOT/.cache/e2e}
IMAGES=${IMAGES:-$E2E_CACHE/images}
REPO=cloudbucket-e2e.local
SIDECAR_TAG=e2e
PY=${PY:-python3}
mkdir -p "$IMAGES" "$E2E_CACHE/sidecars-bin"

bin_dir=$E2E_CACHE/sidecars-bin
need=""
for b in pause csi-node-driver-registrar livenessprobe csi-provisioner; do
  [ -x "$bin_dir/$b" ] || need=1
done
if [ -n "$need" ]; then
  start=$(date +%s)
  (cd "$HERE/sidecars" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "-s -w" -o "$bin_dir/" ./pause ./registrar ./livenessprobe ./provisioner)
  mv "$bin_dir/registrar" "$bin_dir/csi-node-driver-registrar"
  mv "$bin_dir/provisioner" "$bin_dir/csi-provisioner"
  echo "sidecars built in $(( $(date +%s) - start ))s"
fi

archive() {  # archive FILE NAME ARGS...
  local out=$IMAGES/$1.tar name=$2; shift 2
  [ -f "$out" ] && return
  "$PY" "$HERE/docker_archive.py" "$out" "$name" "$@"
  echo "image $name -> $out"
}
archive pause "$REPO/pause:3.10" --entrypoint /pause --file /pause="$bin_dir/pause"
archive csi-node-driver-registrar "$REPO/csi-node-driver-registrar:$SIDECAR_TAG" \
  --entrypoint /csi-node-driver-registrar --file /csi-node-driver-registrar="$bin_dir/csi-node-driver-registrar"
archive livenessprobe "$REPO/livenessprobe:$SIDECAR_TAG" \
  --entrypoint /livenessprobe --file /livenessprobe="$bin_dir/livenessprobe"
archive csi-provisioner "$REPO/csi-provisioner:$SIDECAR_TAG" \
  --entrypoint /csi-provisioner --file /csi-provisioner="$bin_dir/csi-provisioner"
links=()
for applet in $(/bin/busybox --list | grep -vx busybox); do links+=(--symlink "/bin/$applet=busybox"); done
archive busybox "$REPO/busybox:e2e" --entrypoint /bin/sh --file /bin/busybox=/bin/busybox "${links[@]}"

if [ -z "${NO_DRIVER_IMAGE:-}" ]; then
  DRIVER_IMAGE=${DRIVER_IMAGE:?DRIVER_IMAGE (name:tag) is required}
  docker_cmd=(docker -H "unix://$ROOT/.cache/docker.sock")
  id=$("${docker_cmd[@]}" image inspect -f '{{.Id}}' "$DRIVER_IMAGE")
  if [ "$(cat "$IMAGES/driver.id" 2>/dev/null)" != "$id" ]; then
    "${docker_cmd[@]}" save -o "$IMAGES/driver.tar.tmp" "$DRIVER_IMAGE"
    mv "$IMAGES/driver.tar.tmp" "$IMAGES/driver.tar"
    echo "$id" >"$IMAGES/driver.id"
    echo "image $DRIVER_IMAGE -> $IMAGES/driver.tar"
  fi
fi
