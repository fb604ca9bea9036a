#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, for the e2e suite: no kind, no registry.
#
#   cluster.sh up      start etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                      containerd and kubelet; import the cached images; wait for the node
#   cluster.sh down    stop them by PID, unmount what kubelet left, remove runtime state
#   cluster.sh exec CMD...   run CMD inside the cluster's network namespace (KUBECONFIG set)
#   cluster.sh status
#
# Network: everything lives in a network namespace of its own (`cbe2e`) entered with
# `nsenter --net` only, so the mount namespace stays the host's (kubelet, containerd and the
# CSI driver must see each other's mounts). Inside it: a port-less bridge `cbe2e0` (no dummy driver in this kernel) holding the node
# address 10.100.0.1 and the `kubernetes` Service address 10.96.0.1, on which kube-apiserver
# listens at :443, so pods reach the apiserver without kube-proxy; the default route points
# at that bridge, so nothing can leave the namespace. Pods get 10.88.0.0/24 on the
# bridge `cni0` (CNI bridge + host-local from Debian's containernetworking-plugins).
#
# Binaries: kube-* and kubelet from build-k8s.sh ($K8S_BIN); etcd, containerd, runc and the
# CNI plugins from Debian. Images: docker-archive tarballs in $IMAGES (pause, sidecars,
# the driver) imported with `ctr images import`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
E2E_CACHE=${E2E_CACHE:-$ROOT/.cache/e2e}
K8S_VERSION=${K8S_VERSION:-v1.33.13}
K8S_BIN=${K8S_BIN:-$E2E_CACHE/k8s-$K8S_VERSION/bin}
IMAGES=${IMAGES:-$E2E_CACHE/images}
RUN=${E2E_RUN:-$E2E_CACHE/run}
NETNS=cbe2e
NODE_NAME=cbe2e-node
NODE_IP=10.100.0.1
API_IP=10.96.0.1
SERVICE_CIDR=10.96.0.0/24
POD_CIDR=10.88.0.0/24
KUBELET_DIR=/var/lib/kubelet
CTR_STATE=/run/cbe2e-containerd
CTR_SOCK=$CTR_STATE/containerd.sock
PAUSE_IMAGE=cloudbucket-e2e.local/pause:3.10
KUBECONFIG_FILE=$RUN/admin.kubeconfig

in_ns() { nsenter --net=/run/netns/$NETNS "$@"; }
log() { echo "[cluster] $*" >&2; }

# start NAME CMD...: run CMD in the namespace, in the background, PID in $RUN/NAME.pid.
start() {
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then return; fi
  nohup nsenter --net=/run/netns/$NETNS "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 1
  done
}

certs() {
  local pki=$RUN/pki
  [ -f "$pki/done" ] && return
  mkdir -p "$pki" && cd "$pki"
  openssl genrsa -out ca.key 2048 2>/dev/null
  openssl req -x509 -new -key ca.key -days 30 -subj /CN=cbe2e-ca -out ca.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # cert NAME SUBJECT [SAN]
  cert() {
    openssl genrsa -out "$1.key" 2048 2>/dev/null
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    local ext=$1.ext
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
    [ -n "${3:-}" ] && echo "subjectAltName=$3" >>"$ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extfile "$ext" -out "$1.crt" 2>/dev/null
  }
  cert apiserver /CN=kube-apiserver \
    "IP:$API_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=cbe2e-admin"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert controller-manager /CN=system:kube-controller-manager
  cert scheduler /CN=system:kube-scheduler
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  for who in admin controller-manager scheduler kubelet; do
    cat >"$RUN/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cbe2e
  cluster: {server: "https://127.0.0.1:443", certificate-authority: "$pki/ca.crt"}
users:
- name: $who
  user: {client-certificate: "$pki/$who.crt", client-key: "$pki/$who.key"}
contexts:
- name: cbe2e
  context: {cluster: cbe2e, user: $who}
current-context: cbe2e
EOF
  done
  touch done
  cd - >/dev/null
}

network() {
  if [ ! -e /run/netns/$NETNS ]; then
    ip netns add $NETNS
  fi
  ip -n $NETNS link set lo up
  if ! ip -n $NETNS link show cbe2e0 >/dev/null 2>&1; then
    ip -n $NETNS link add cbe2e0 type bridge
    ip -n $NETNS addr add $NODE_IP/32 dev cbe2e0
    ip -n $NETNS addr add $API_IP/32 dev cbe2e0
    ip -n $NETNS link set cbe2e0 up
    # A default route into that port-less bridge: kubelet wants one, and packets for any other
    # address are dropped there.
    ip -n $NETNS route add default dev cbe2e0
  fi
  mkdir -p "$RUN/cni/net.d" "$RUN/cni/ipam"
  cat >"$RUN/cni/net.d/10-cbe2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "cbe2e",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$RUN/cni/ipam",
             "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
}

containerd_up() {
  mkdir -p "$RUN/containerd" "$CTR_STATE"
  cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$E2E_CACHE/containerd-root"
state = "$CTR_STATE"
[grpc]
  address = "$CTR_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE in this machine's bounding set: runc cannot lower oom_score_adj
  # below containerd's own (the sandbox asks for -998), so clamp it as rootless setups do.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
EOF
  start containerd containerd --config "$RUN/containerd/config.toml"
  wait_for containerd 60 ctr --address "$CTR_SOCK" version
  local tar
  for tar in "$IMAGES"/*.tar; do
    [ -e "$tar" ] || continue
    ctr --address "$CTR_SOCK" -n k8s.io images import "$tar" >/dev/null \
      || { log "import of $tar failed"; return 1; }
  done
}

control_plane_up() {
  local pki=$RUN/pki
  mkdir -p "$RUN/etcd"
  start etcd etcd --name cbe2e --data-dir "$RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster cbe2e=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 60 in_ns curl -sf http://127.0.0.1:2379/health
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=443 --advertise-address=$API_IP \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --service-account-issuer=https://$API_IP \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --anonymous-auth=true --profiling=false --v=1
  wait_for kube-apiserver 180 kubectl get --raw /readyz
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$RUN/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$RUN/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$RUN/controller-manager.kubeconfig" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1 \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" --v=1
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$RUN/scheduler.kubeconfig" \
    --authentication-kubeconfig="$RUN/scheduler.kubeconfig" \
    --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --v=1
}

kubelet_up() {
  local pki=$RUN/pki
  mkdir -p "$KUBELET_DIR"
  # Bidirectional mount propagation (the node plugin's mounts reaching pods) needs kubelet's
  # directory on a shared mount; this machine's / is private.
  if ! awk '{print $5}' /proc/self/mountinfo | grep -qx "$KUBELET_DIR"; then
    mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
    mount --make-rshared "$KUBELET_DIR"
  fi
  cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CTR_SOCK
serializeImagePulls: false
# A shared 2-core machine with a busy disk: never evict the suite's pods for pressure.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
EOF
  start kubelet "$K8S_BIN/kubelet" --config="$RUN/kubelet.yaml" \
    --kubeconfig="$RUN/kubelet.kubeconfig" --hostname-override=$NODE_NAME \
    --node-ip=$NODE_IP --root-dir="$KUBELET_DIR" --v=2
}

kubectl() { in_ns "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

up() {
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    [ -x "$K8S_BIN/$b" ] || { log "missing $K8S_BIN/$b: run build-k8s.sh first"; exit 1; }
  done
  mkdir -p "$RUN"
  certs
  network
  control_plane_up
  containerd_up
  kubelet_up
  wait_for "node $NODE_NAME Ready" 240 \
    kubectl wait --for=condition=Ready node/$NODE_NAME --timeout=5s
  # The STS of case 5 reads the service-account issuer's discovery document and JWKS
  # without credentials, as a cloud STS does.
  kubectl create clusterrolebinding cbe2e-oidc-discovery --clusterrole=system:service-account-issuer-discovery \
    --group=system:unauthenticated --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  wait_for "default service account" 60 kubectl get serviceaccount default
  log "cluster up: KUBECONFIG=$KUBECONFIG_FILE (reach it through: $0 exec ...)"
}

stop_pid() {
  local name=$1 pidfile=$RUN/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  set +e  # tear down as much as there is, whatever fails on the way
  if [ -S "$CTR_SOCK" ] && [ -f "$RUN/kubelet.pid" ]; then
    # Pods first, while kubelet and the CSI driver can still unpublish their volumes.
    kubectl delete pods --all --all-namespaces --grace-period=5 --timeout=60s >/dev/null 2>&1 || true
  fi
  stop_pid kubelet
  if [ -S "$CTR_SOCK" ]; then
    # Containers are children of shims, not of containerd: stop them through the CRI.
    local ids
    ids=$(ctr --address "$CTR_SOCK" -n k8s.io tasks ls -q 2>/dev/null || true)
    for id in $ids; do ctr --address "$CTR_SOCK" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
    for id in $ids; do
      for _ in $(seq 20); do
        ctr --address "$CTR_SOCK" -n k8s.io tasks ls -q 2>/dev/null | grep -qx "$id" || break
        ctr --address "$CTR_SOCK" -n k8s.io tasks delete "$id" >/dev/null 2>&1 || sleep 0.5
      done
    done
    ctr --address "$CTR_SOCK" -n k8s.io containers ls -q 2>/dev/null \
      | xargs -r ctr --address "$CTR_SOCK" -n k8s.io containers rm >/dev/null 2>&1 || true
  fi
  stop_pid containerd
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid "$name"; done
  # Whatever is still mounted under kubelet's directory, the containerd state or the pod
  # network namespaces (deepest first).
  grep -E " ($KUBELET_DIR|$CTR_STATE|/run/netns/cni-|$E2E_CACHE/containerd-root)" /proc/self/mountinfo \
    | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for ns in /run/netns/cni-*; do [ -e "$ns" ] && ip netns delete "$(basename "$ns")" 2>/dev/null; done
  ip netns delete $NETNS 2>/dev/null || true
  rm -rf "$KUBELET_DIR" "$CTR_STATE" /var/lib/cloudbucket-csi
  rm -rf "$RUN"
  # kubelet's cgroups (cgroup v1: one tree per controller), deepest first.
  for c in /sys/fs/cgroup/*/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  log "cluster down"
}

status() {
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet; do
    if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
      echo "$name: running (pid $(cat "$RUN/$name.pid"))"
    else
      echo "$name: stopped"
    fi
  done
}

KUBECTL=${KUBECTL:-$ROOT/.cache/bin/kubectl}
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  runtime) mkdir -p "$RUN"; network; containerd_up ;;  # network + containerd only (debugging)
  exec) shift; KUBECONFIG=$KUBECONFIG_FILE in_ns "$@" ;;
  kubectl) shift; kubectl "$@" ;;
  *) echo "usage: $0 up|down|status|runtime|exec CMD...|kubectl ARGS..." >&2; exit 2 ;;
esac
