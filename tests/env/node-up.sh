#!/usr/bin/env bash
# A one-node cluster at the current Kubernetes release: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, the VolumeSnapshot
# CRDs and snapshot-controller, containerd (runc, CNI bridge), kubelet,
# kube-proxy, a CSI driver with the external-provisioner and csi-snapshotter
# sidecars, and Garage S3, all as host processes. The integration tests'
# `node` module starts it once per test binary; `just node ...` drives it by
# hand.
#
#   tests/env/node-up.sh up      start everything (builds via setup-node.sh, cached)
#   tests/env/node-up.sh smoke   run the kubestow image in a pod (restricted
#                                Pod Security, non-root, read-only root fs) to Completed
#   tests/env/node-up.sh volume  volume-backup of a PVC to a file:// repository on
#                                another PVC, volume-restore into a third, compare
#   tests/env/node-up.sh api     kubestow preflight in a pod reaches the API server
#   tests/env/node-up.sh down    stop everything and remove what `up` made
#
# After `up`, $KUBESTOW_NODE_DIR/s3.env holds the S3 endpoint (on the node
# IP, so pods reach it), bucket and key of the Garage that `up` started.
#
# Then: export KUBECONFIG=$KUBESTOW_NODE_DIR/admin.kubeconfig
#
# Network: the node's address is the host end of a veth pair whose other end
# is in a network namespace this script makes; pods sit on a bridge with a
# private range and get no default route, only routes to the node IP and the
# Service range. Nothing is routed off the machine, and ip_forward is left as
# it is. kube-proxy DNATs the `kubernetes` Service to the API server on the
# node IP. It also installs its usual MASQUERADE rule for packets it marks;
# with clusterCIDR set to the pod range it marks none of the pods' packets
# (only host-originated traffic to a Service IP, which stays on this host),
# and `masquerade-count` prints the rule's packet counter so tests can
# assert it stays 0.
#
# The kubestow image comes from images/build.sh (KUBESTOW_IMAGE_TAR, default
# target/image/kubestow-image.tar), imported into containerd; pods use
# imagePullPolicy: Never, since nothing can be pulled here.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
K8S_VERSION="${KUBESTOW_K8S_VERSION:-1.37.2}"
ETCD_VERSION=3.6.16
SNAPSHOTTER_VERSION="${KUBESTOW_SNAPSHOTTER_VERSION:-8.7.0}"
PAUSE_IMAGE=localhost/kubestow/pause:1
D="${KUBESTOW_NODE_DIR:-/tmp/kubestow-node}"
IMAGE_TAR="${KUBESTOW_IMAGE_TAR:-${CARGO_TARGET_DIR:-$repo/target}/image/kubestow-image.tar}"
IMAGE="${KUBESTOW_IMAGE:-localhost/kubestow:dev}"

NODE=kubestow-node
NETNS=kubestow-node
HOST_IF=ksnode0          # host end of the veth; carries the node IP
NODE_IP=10.213.0.1
PEER_IP=10.213.0.2       # the other end, inside $NETNS
BRIDGE=ksbr0
POD_CIDR=10.214.0.0/24
BRIDGE_IP=10.214.0.1
SERVICE_CIDR=10.215.0.0/24
SERVICE_IP=10.215.0.1
APISERVER_PORT=16443
ETCD_PORT=12379
S3_PORT=13900            # Garage's S3 API, on the node IP
S3_TLS_PORT=13904        # the same over TLS (stunnel, a private CA)
GARAGE_VERSION=2.5.0
CSI_DRIVER=hostpath.csi.kubestow.test
# A second instance of the same driver with no VolumeSnapshotClass (storage
# class csi-plain): what kubestow sees on a cluster whose driver cannot
# snapshot, so `auto` reads its claims through the kubelet.
CSI_PLAIN=plain.csi.kubestow.test
PROVISIONER_VERSION=6.4.0

K8S_BIN="$CACHE/kubernetes-$K8S_VERSION/bin"
NODE_BIN="$K8S_BIN"
# 1.20.2, the oldest release the chart supports: its control plane is
# setup.sh's build and its kubelet, scheduler and proxy setup-node.sh's
# k8s-1.20 step (both from Debian's source package). Flags and config fields
# that 1.20 lacks or needs differ below where LEGACY is set.
LEGACY=""
if [[ $K8S_VERSION == 1.20.* ]]; then
  LEGACY=1
  K8S_BIN="$CACHE/kubernetes-$K8S_VERSION-reflect2fix/bin"
  NODE_BIN="$CACHE/kubernetes-$K8S_VERSION-reflect2fix-node/bin"
fi
ETCD_BIN="$CACHE/etcd-$ETCD_VERSION/bin/etcd"
SNAP="$CACHE/external-snapshotter-$SNAPSHOTTER_VERSION"
log() { printf '[node] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (kubelet, containerd and ip netns need it)"

start() { # name cmd...
  local name=$1; shift
  mkdir -p "$D/log" "$D/pids"
  setsid "$@" >"$D/log/$name.log" 2>&1 </dev/null &
  echo $! >"$D/pids/$name"
  log "started $name (pid $!, log $D/log/$name.log)"
}

wait_for() { # seconds description cmd...
  local secs=$1 what=$2; shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "timed out after ${secs}s waiting for $what"
  return 1
}

pki() {
  local p="$D/pki"
  mkdir -p "$p"
  cd "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout ca.key -out ca.crt -subj "/CN=kubestow-node-ca" 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub
  cert() { # name subject [san]
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    local ext="extendedKeyUsage=clientAuth"
    [ -z "${3:-}" ] || ext="extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$3"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extfile <(printf '%s\n' "$ext") -out "$1.crt" 2>/dev/null
    rm -f "$1.csr"
  }
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert admin "/O=system:masters/CN=kubestow-admin"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kube-proxy "/CN=system:kube-proxy"
  for u in admin kubelet controller-manager scheduler kube-proxy; do
    local kc="$D/$u.kubeconfig"
    kubectl config set-cluster node --server="https://$NODE_IP:$APISERVER_PORT" \
      --certificate-authority="$p/ca.crt" --embed-certs --kubeconfig="$kc" >/dev/null
    kubectl config set-credentials "$u" --client-certificate="$p/$u.crt" --client-key="$p/$u.key" \
      --embed-certs --kubeconfig="$kc" >/dev/null
    kubectl config set-context node --cluster=node --user="$u" --kubeconfig="$kc" >/dev/null
    kubectl config use-context node --kubeconfig="$kc" >/dev/null
  done
  cd - >/dev/null
}

network() {
  ip netns add "$NETNS"
  ip link add "$HOST_IF" type veth peer name eth0 netns "$NETNS"
  ip addr add "$NODE_IP/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip -n "$NETNS" addr add "$PEER_IP/24" dev eth0
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link set eth0 up
  # The pod bridge carries its gateway address itself, so the CNI bridge
  # plugin runs with isGateway false and leaves ip_forward alone. Pods get
  # their subnet and one host route, to the node IP (the apiserver listens
  # there); both end on this host, so nothing is forwarded.
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

containerd_up() {
  local c="$D/containerd"
  mkdir -p "$c/root" "$c/state" "$D/cni/net.d"
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  disable_hugetlb_controller = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
EOF
  cat >"$D/cni/net.d/10-kubestow.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kubestow",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "${POD_CIDR%.*}.10", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$NODE_IP/32", "gw": "$BRIDGE_IP"}, {"dst": "$SERVICE_CIDR", "gw": "$BRIDGE_IP"}],
        "dataDir": "$D/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
  ]
}
EOF
  start containerd containerd --config "$c/config.toml"
  wait_for 30 containerd ctr -a "$c/containerd.sock" version
  ctr -a "$c/containerd.sock" -n k8s.io images import "$CACHE/pause-1/pause.tar" >/dev/null
  ctr -a "$c/containerd.sock" -n k8s.io images import "$IMAGE_TAR" >/dev/null
  ctr -a "$c/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:' | sed 's/^/[node] image: /' >&2
}

control_plane() {
  local p="$D/pki"
  start etcd "$ETCD_BIN" --name=node --data-dir="$D/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls="http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster="node=http://127.0.0.1:$((ETCD_PORT + 1))" --listen-metrics-urls= \
    --log-level=warn
  wait_for 30 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
    --cert-dir="$p" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --profiling=false ${LEGACY:+--insecure-port=0}
  wait_for 60 kube-apiserver kubectl --kubeconfig="$D/admin.kubeconfig" get --raw /readyz
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$D/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$D/controller-manager.kubeconfig" --authorization-kubeconfig="$D/controller-manager.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --use-service-account-credentials=true --controllers='*' --cluster-name=kubestow-node \
    --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false ${LEGACY:+--port=0}
  # The VolumeSnapshot API: CRDs and the snapshot-controller of one release.
  # 1.20 knows no CEL rules (x-kubernetes-validations): the client's schema
  # check refuses them, the server drops them.
  kubectl --kubeconfig="$D/admin.kubeconfig" apply ${LEGACY:+--validate=false} -f "$SNAP/crd/" >/dev/null
  start snapshot-controller "$SNAP/bin/snapshot-controller" \
    --kubeconfig="$D/admin.kubeconfig" --leader-election=false
  start kube-scheduler "$NODE_BIN/kube-scheduler" \
    --kubeconfig="$D/scheduler.kubeconfig" \
    --authentication-kubeconfig="$D/scheduler.kubeconfig" --authorization-kubeconfig="$D/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --profiling=false ${LEGACY:+--port=0}
}

kubelet_up() {
  local k="$D/kubelet"
  mkdir -p "$k/pki"
  # kubelet rewrites these at start; `down` puts them back.
  [ -f "$D/sysctl.saved" ] || sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops >"$D/sysctl.saved"
  # Fixed paths kubelet and the shims use; `down` removes those this run made.
  : >"$D/made-paths"
  local x
  for x in /var/log/pods /var/log/containers /var/lib/kubelet /run/containerd; do
    [ -e "$x" ] || echo "$x" >>"$D/made-paths"
  done
  # kubelet adds iptables chains (KUBE-FIREWALL with jumps from INPUT and
  # OUTPUT, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT); `down` removes them
  # unless they were there before.
  iptables -S KUBE-FIREWALL >/dev/null 2>&1 || touch "$D/made-iptables"
  cat >"$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
$([ -n "$LEGACY" ] || printf 'containerRuntimeEndpoint: unix://%s\nfailCgroupV1: false\n' "$D/containerd/containerd.sock")
cgroupDriver: cgroupfs
failSwapOn: false
protectKernelDefaults: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $D/pki/ca.crt}
authorization: {mode: Webhook}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1%", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
nodeStatusUpdateFrequency: 5s
serializeImagePulls: false
resolvConf: ""
EOF
  # 1.20 takes the runtime endpoint as flags (the config field came in 1.27).
  local legacy_flags=()
  [ -z "$LEGACY" ] || legacy_flags=(--container-runtime=remote
    --container-runtime-endpoint="unix://$D/containerd/containerd.sock")
  start kubelet "$NODE_BIN/kubelet" --config="$k/config.yaml" --kubeconfig="$D/kubelet.kubeconfig" \
    --root-dir="$k/root" --cert-dir="$k/pki" --node-ip="$NODE_IP" --hostname-override="$NODE" --v=1 \
    "${legacy_flags[@]}"
  local t0=$SECONDS
  wait_for 120 "node Ready" kubectl --kubeconfig="$D/admin.kubeconfig" wait --for=condition=Ready "node/$NODE" --timeout=2s
  log "node $NODE Ready $((SECONDS - t0)) s after kubelet started"
}

# kube-proxy in iptables mode: the `kubernetes` Service (and any other)
# reaches its endpoints as in a real cluster. No NodePorts on localhost
# (that would set route_localnet) and no conntrack sysctls.
kube_proxy_up() {
  cat >"$D/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $D/kube-proxy.kubeconfig}
hostnameOverride: $NODE
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
mode: iptables
iptables: {$([ -n "$LEGACY" ] || echo 'localhostNodePorts: false, ')masqueradeAll: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
EOF
  touch "$D/made-kube-proxy"
  start kube-proxy "$NODE_BIN/kube-proxy" --config="$D/kube-proxy.yaml" --v=1
  wait_for 60 "kube-proxy rules for the kubernetes Service" \
    sh -c "iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q '$SERVICE_IP/32'"
}

# Packets the MASQUERADE rule of kube-proxy has rewritten (0 is expected).
masquerade_count() {
  iptables -t nat -L KUBE-POSTROUTING -v -x -n 2>/dev/null | awk '/MASQUERADE/ { n += $1 } END { print n + 0 }'
}

# Our hostpath CSI driver (tests/env/csi-hostpath; the upstream one is not
# served here) with the real external-provisioner and csi-snapshotter
# sidecars. The driver registers with the kubelet itself.
csi_up() {
  local kc=(kubectl --kubeconfig="$D/admin.kubeconfig")
  local sock="$D/kubelet/root/plugins/$CSI_DRIVER/csi.sock"
  local prov="$CACHE/external-provisioner-$PROVISIONER_VERSION/bin/csi-provisioner"
  mkdir -p "$D/csi" "$(dirname "$sock")"
  "${kc[@]}" apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: $CSI_DRIVER}
spec:
  attachRequired: false
  podInfoOnMount: false
  fsGroupPolicy: File
  volumeLifecycleModes: [Persistent]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: csi-hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: $CSI_DRIVER
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: false
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: csi-hostpath
  annotations: {snapshot.storage.kubernetes.io/is-default-class: "true"}
driver: $CSI_DRIVER
deletionPolicy: Delete
---
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: $CSI_PLAIN}
spec: {attachRequired: false, podInfoOnMount: false, fsGroupPolicy: File, volumeLifecycleModes: [Persistent]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: csi-plain}
provisioner: $CSI_PLAIN
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  local plain="$D/kubelet/root/plugins/$CSI_PLAIN/csi.sock"
  mkdir -p "$D/csi-plain" "$(dirname "$plain")"
  start csi-plain "$CACHE/csi-hostpath-current/bin/csi-hostpath" -driver="$CSI_PLAIN" \
    -endpoint="$plain" -registration-dir="$D/kubelet/root/plugins_registry" -state="$D/csi-plain" -node="$NODE"
  start csi-hostpath "$CACHE/csi-hostpath-current/bin/csi-hostpath" -driver="$CSI_DRIVER" \
    -endpoint="$sock" -registration-dir="$D/kubelet/root/plugins_registry" -state="$D/csi" -node="$NODE"
  wait_for 30 "CSI socket" test -S "$sock"
  start csi-provisioner "$prov" --kubeconfig="$D/admin.kubeconfig" --csi-address="$sock" \
    --leader-election=false --extra-create-metadata --timeout=60s --v=2
  start csi-snapshotter "$SNAP/bin/csi-snapshotter" --kubeconfig="$D/admin.kubeconfig" --csi-address="$sock" \
    --leader-election=false --extra-create-metadata --timeout=60s --v=2
  wait_for 30 "CSI socket of $CSI_PLAIN" test -S "$plain"
  start csi-plain-provisioner "$prov" --kubeconfig="$D/admin.kubeconfig" --csi-address="$plain" \
    --leader-election=false --extra-create-metadata --timeout=60s --v=2
  wait_for 60 "CSINode $NODE lists $CSI_DRIVER" \
    sh -c "kubectl --kubeconfig='$D/admin.kubeconfig' get csinode '$NODE' -o jsonpath='{.spec.drivers[*].name}' | grep -q '$CSI_DRIVER'"
  wait_for 60 "CSINode $NODE lists $CSI_PLAIN" \
    sh -c "kubectl --kubeconfig='$D/admin.kubeconfig' get csinode '$NODE' -o jsonpath='{.spec.drivers[*].name}' | grep -q '$CSI_PLAIN'"
}

# Garage S3 on the node IP, so pods reach it; one key and one bucket.
garage_up() {
  local g="$D/garage" bin="$CACHE/garage-$GARAGE_VERSION/bin/garage"
  mkdir -p "$g"
  cat >"$g/garage.toml" <<EOF
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((S3_PORT + 1))"
rpc_public_addr = "127.0.0.1:$((S3_PORT + 1))"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "$NODE_IP:$S3_PORT"
[admin]
api_bind_addr = "127.0.0.1:$((S3_PORT + 2))"
EOF
  start garage env RUST_LOG=garage=warn "$bin" -c "$g/garage.toml" server
  local gc=("$bin" -c "$g/garage.toml")
  wait_for 60 "garage status" "${gc[@]}" status
  local id out
  id=$("${gc[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  "${gc[@]}" layout assign -z dc1 -c 1G "$id" >/dev/null
  "${gc[@]}" layout apply --version 1 >/dev/null
  out=$("${gc[@]}" key create kubestow-node)
  wait_for 30 "garage bucket" "${gc[@]}" bucket create kubestow
  "${gc[@]}" bucket allow --read --write --owner kubestow --key kubestow-node >/dev/null
  # The same Garage over TLS, with a certificate from a CA of its own that
  # no trust store holds (Garage serves plain HTTP; TLS belongs in a proxy).
  local t="$D/s3-tls"
  mkdir -p "$t"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$t/ca.key" -out "$t/ca.crt" -subj "/CN=kubestow-node-s3-ca" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$t/s3.key" \
    -out "$t/s3.csr" -subj "/CN=$NODE_IP" 2>/dev/null
  openssl x509 -req -in "$t/s3.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial -days 30 \
    -extfile <(printf 'extendedKeyUsage=serverAuth\nsubjectAltName=IP:%s\n' "$NODE_IP") \
    -out "$t/s3.crt" 2>/dev/null
  printf 'foreground = yes\npid =\n[s3]\naccept = %s:%s\nconnect = %s:%s\ncert = %s\nkey = %s\n' \
    "$NODE_IP" "$S3_TLS_PORT" "$NODE_IP" "$S3_PORT" "$t/s3.crt" "$t/s3.key" >"$t/stunnel.conf"
  start s3-tls stunnel4 "$t/stunnel.conf"
  wait_for 30 "stunnel on $NODE_IP:$S3_TLS_PORT" bash -c "exec 3<>/dev/tcp/$NODE_IP/$S3_TLS_PORT"
  {
    echo "AWS_ENDPOINT_URL=http://$NODE_IP:$S3_PORT"
    echo "S3_TLS_ENDPOINT_URL=https://$NODE_IP:$S3_TLS_PORT"
    echo "S3_TLS_CA_FILE=$t/ca.crt"
    echo "AWS_REGION=garage"
    echo "AWS_ACCESS_KEY_ID=$(awk -F': *' '/Key ID/ { print $2; exit }' <<<"$out")"
    echo "AWS_SECRET_ACCESS_KEY=$(awk -F': *' '/Secret key/ { print $2; exit }' <<<"$out")"
    echo "STOW_BUCKET=kubestow"
  } >"$D/s3.env"
  chmod 600 "$D/s3.env"
}

up() {
  [ ! -e "$D/pids" ] || die "$D exists: run '$0 down' first"
  [ -f "$IMAGE_TAR" ] || die "no image archive at $IMAGE_TAR: run 'just image' first"
  if [ -n "$LEGACY" ]; then
    bash "$repo/tests/env/setup.sh"
    bash "$repo/tests/env/setup-node.sh" debian etcd k8s-1.20 pause csi
  else
    bash "$repo/tests/env/setup-node.sh" debian etcd k8s pause csi
  fi
  local need=() c
  for c in curl jq openssl kubectl; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
  [[ " ${need[*]} " != *" kubectl "* ]] || need=("${need[@]/kubectl/kubernetes-client}")
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  mkdir -p "$D"
  pki
  network
  containerd_up
  control_plane
  kubelet_up
  kube_proxy_up
  csi_up
  garage_up
  kubectl --kubeconfig="$D/admin.kubeconfig" get nodes -o wide >&2
  log "up: export KUBECONFIG=$D/admin.kubeconfig"
}

pod_finished() { # namespace pod
  local p
  p=$(kubectl --kubeconfig="$D/admin.kubeconfig" -n "$1" get pod "$2" -o jsonpath='{.status.phase}')
  [ "$p" = Succeeded ] || [ "$p" = Failed ]
}

smoke() {
  local kc=(kubectl --kubeconfig="$D/admin.kubeconfig")
  "${kc[@]}" apply -f - >&2 <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: smoke
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
EOF
  # A new namespace's default ServiceAccount comes a moment later.
  wait_for 30 "serviceaccount smoke/default" "${kc[@]}" -n smoke get serviceaccount default
  "${kc[@]}" apply -f - >&2 <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: kubestow-help
  namespace: smoke
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: kubestow
      image: $IMAGE
      imagePullPolicy: Never
      args: ["--help"]
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
EOF
  local t0=$SECONDS
  wait_for 120 "pod to finish" pod_finished smoke kubestow-help || true
  "${kc[@]}" -n smoke get pod kubestow-help -o wide >&2
  local phase id
  phase=$("${kc[@]}" -n smoke get pod kubestow-help -o jsonpath='{.status.phase}')
  log "pod phase $phase, $((SECONDS - t0)) s after creation; log:"
  "${kc[@]}" -n smoke logs kubestow-help | sed -n 1,3p >&2
  # What the container really ran as, from the OCI spec containerd used.
  id=$("${kc[@]}" -n smoke get pod kubestow-help -o jsonpath='{.status.containerStatuses[0].containerID}')
  ctr -a "$D/containerd/containerd.sock" -n k8s.io containers info "${id#containerd://}" |
    jq -c '{user: .Spec.process.user, readonlyRoot: .Spec.root.readonly, noNewPrivileges: .Spec.process.noNewPrivileges, capabilities: .Spec.process.capabilities.bounding, seccompDefault: .Spec.linux.seccomp.defaultAction}' >&2
  "${kc[@]}" delete namespace smoke --wait=false >&2
  [ "$phase" = Succeeded ]
}

# kubestow in a pod reaches the API server with its ServiceAccount token,
# through the kubernetes Service (kube-proxy). preflight reports the server
# version, then the RBAC it lacks (the default ServiceAccount has none), and
# exits non-zero.
api() {
  local kc=(kubectl --kubeconfig="$D/admin.kubeconfig")
  "${kc[@]}" apply -f - >&2 <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: smoke-api
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
EOF
  wait_for 30 "serviceaccount smoke-api/default" "${kc[@]}" -n smoke-api get serviceaccount default
  "${kc[@]}" apply -f - >&2 <<EOF
apiVersion: v1
kind: Pod
metadata: {name: preflight, namespace: smoke-api}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: kubestow
      image: $IMAGE
      imagePullPolicy: Never
      args: [preflight]
      env:
        - {name: STOW_REPOSITORY, value: "file:///tmp/repo"}
        - {name: STOW_PASSWORD, value: smoke-password}
      securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
EOF
  wait_for 120 "pod preflight to finish" pod_finished smoke-api preflight || true
  local out
  out=$("${kc[@]}" -n smoke-api logs preflight | grep -o 'API server .* reachable, version [^ ]*' | head -n1 || true)
  "${kc[@]}" delete namespace smoke-api --wait=false >&2
  [ -n "$out" ] || { log "the pod did not reach the API server"; return 1; }
  log "from the pod: $out"
}

# Three PVCs bound to hostPath PVs under $D/volumes (data, repo, restore). A
# volume-backup pod reads data into a file:// repository on repo; a
# volume-restore pod fills restore from it; the host compares the trees. Runs
# in a namespace with Pod Security 'restricted' enforced (PVCs are allowed
# there; hostPath volumes in pods are not).
volume() {
  local kc=(kubectl --kubeconfig="$D/admin.kubeconfig") v="$D/volumes" n
  rm -rf "$v"
  mkdir -p "$v/data/sub" "$v/repo" "$v/restore"
  head -c 3000000 /dev/urandom >"$v/data/random.bin"
  echo hello >"$v/data/sub/hello.txt"
  ln -s sub/hello.txt "$v/data/link"
  chmod -R a+rX "$v/data"
  chown 65532:65532 "$v/repo" "$v/restore"
  {
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: smoke-volume
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
EOF
    for n in data repo restore; do
      cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: smoke-$n}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: smoke
  claimRef: {namespace: smoke-volume, name: $n}
  hostPath: {path: $v/$n, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $n, namespace: smoke-volume}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: smoke
  volumeName: smoke-$n
  resources: {requests: {storage: 1Gi}}
EOF
    done
  } | "${kc[@]}" apply -f - >&2
  wait_for 30 "serviceaccount smoke-volume/default" "${kc[@]}" -n smoke-volume get serviceaccount default
  mover_pod() { # name mode volume-claim mount-read-only
    cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: smoke-volume}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: kubestow
      image: $IMAGE
      imagePullPolicy: Never
      args: ["$2"]
      env:
        - {name: STOW_REPOSITORY, value: "file:///repo"}
        - {name: STOW_PASSWORD, value: smoke-password}
        - {name: STOW_INIT, value: "true"}
        - {name: STOW_VOLUME_PATH, value: /volume}
        - {name: STOW_VOLUME_NAME, value: smoke-volume/data}
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: volume, mountPath: /volume, readOnly: $4}
        - {name: repo, mountPath: /repo}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - {name: volume, persistentVolumeClaim: {claimName: $3}}
    - {name: repo, persistentVolumeClaim: {claimName: repo}}
    - {name: tmp, emptyDir: {}}
EOF
  }
  local pod mode claim ro t0 phase
  for pod in backup:volume-backup:data:true restore:volume-restore:restore:false; do
    IFS=: read -r pod mode claim ro <<<"$pod"
    mover_pod "$pod" "$mode" "$claim" "$ro" | "${kc[@]}" apply -f - >&2
    t0=$SECONDS
    wait_for 120 "pod $pod to finish" pod_finished smoke-volume "$pod" || true
    phase=$("${kc[@]}" -n smoke-volume get pod "$pod" -o jsonpath='{.status.phase}')
    log "$pod: $phase after $((SECONDS - t0)) s"
    "${kc[@]}" -n smoke-volume logs "$pod" | tail -n 1 | cut -c1-300 >&2
    [ "$phase" = Succeeded ] || return 1
  done
  diff -r --no-dereference "$v/data" "$v/restore" >&2
  log "restored tree is identical; repository files owned by $(stat -c %u:%g "$v/repo/config")"
  "${kc[@]}" delete namespace smoke-volume --wait=true >&2
  "${kc[@]}" delete pv smoke-data smoke-repo smoke-restore >&2
}

down() {
  [ -d "$D" ] || { log "nothing to stop ($D absent)"; return 0; }
  local c="$D/containerd/containerd.sock" n
  # Stop kubelet first so it does not restart pods, then every pod's tasks.
  stop_pid kubelet
  if [ -S "$c" ]; then
    local id
    for id in $(ctr -a "$c" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$c" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 1
    for id in $(ctr -a "$c" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$c" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -a "$c" -n k8s.io containers ls -q 2>/dev/null); do
      ctr -a "$c" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  for n in csi-provisioner csi-snapshotter csi-hostpath csi-plain-provisioner csi-plain s3-tls garage kube-proxy snapshot-controller kube-scheduler \
    kube-controller-manager kube-apiserver etcd containerd; do stop_pid "$n"; done
  # kube-proxy's own clean-up removes the chains it made.
  [ ! -f "$D/made-kube-proxy" ] || "$NODE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # Mounts under the run directory: pod volumes, sandbox netns, overlay rootfs.
  local m
  for m in $(awk -v d="$D/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  # cgroups kubelet made (cgroupfs driver, cgroup v1).
  local cg
  for cg in /sys/fs/cgroup/*/kubepods; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NETNS" 2>/dev/null || true
  if [ -f "$D/sysctl.saved" ]; then
    local v
    mapfile -t v <"$D/sysctl.saved"
    sysctl -q -w vm.overcommit_memory="${v[0]}" kernel.panic="${v[1]}" kernel.panic_on_oops="${v[2]}"
  fi
  if [ -f "$D/made-iptables" ]; then
    local ipt t ch
    for ipt in iptables ip6tables; do
      $ipt -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
      $ipt -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
      for t in filter nat mangle; do
        for ch in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
          $ipt -t "$t" -F "$ch" 2>/dev/null && $ipt -t "$t" -X "$ch" 2>/dev/null || true
        done
      done
    done
  fi
  if [ -f "$D/made-paths" ]; then
    while read -r x; do rm -rf "$x"; done <"$D/made-paths"
  fi
  rm -rf "$D"
  log "down"
}

stop_pid() {
  local f="$D/pids/$1" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "${1:-}" in
  up) up ;;
  smoke) smoke ;;
  volume) volume ;;
  api) api ;;
  masquerade-count) masquerade_count ;;
  # Fault injection for the tests: stop the csi-snapshotter sidecar, start it again.
  stop-csi-snapshotter) stop_pid csi-snapshotter ;;
  start-csi-snapshotter)
    start csi-snapshotter "$SNAP/bin/csi-snapshotter" --kubeconfig="$D/admin.kubeconfig" \
      --csi-address="$D/kubelet/root/plugins/$CSI_DRIVER/csi.sock" --leader-election=false \
      --extra-create-metadata --timeout=60s --v=2 ;;
  down) down ;;
  *) echo "usage: $0 up|smoke|volume|api|masquerade-count|stop-csi-snapshotter|start-csi-snapshotter|down" >&2; exit 2 ;;
esac
