# The real node of the test cluster (sourced by up.sh and down.sh): containerd,
# runc and the CNI plugins from Debian, a kubelet and kube-proxy built from the
# same Kubernetes modules as the control plane, and images built locally
# (images.sh). What it changes on the host, and how node_down undoes it:
#
#   - $REAL_NODE_IP/32 on the loopback interface                -> deleted
#   - the CNI bridge $NODE_BRIDGE and the Pods' veths           -> deleted
#   - iptables rules of CNI (tagged $CNI_NETWORK), of the kubelet
#     and of kube-proxy (KUBE-*)                                -> removed
#   - cgroups below $CGROUP_ROOT                                -> removed
#   - sysctls the kubelet sets (vm.overcommit_memory, kernel.panic,
#     kernel.panic_on_oops) and net.ipv4.ip_forward             -> restored
#   - mounts below $NODE_DIR (volumes, container root
#     filesystems) and the Pods' network namespaces            -> unmounted
#   - Debian packages (containerd, runc, containernetworking-plugins,
#     iptables, umoci, busybox-static)                          -> kept
#
# Everything else lives under $NODE_DIR, removed with the cluster.

NODE_PACKAGES=(containerd runc containernetworking-plugins iptables umoci busybox-static)
CNI_BIN=/usr/lib/cni
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward fs.inotify.max_user_instances)
# Every followed log (kubectl logs -f, a Berth console) costs the kubelet, and
# kwok, one inotify instance (the CRI log reader watches the log's directory);
# the default 128 per user runs out with a hundred consoles open, and the streams
# past it end at once.
INOTIFY_INSTANCES=8192

# node_preflight: installs what is missing, and says in one line (into
# $NODE_UNAVAILABLE) why this host cannot run the real node, if it cannot.
node_preflight() {
  rm -f "$NODE_UNAVAILABLE"
  local why=""
  if [ "$(id -u)" != 0 ]; then
    why="needs root (it runs containerd and a kubelet, and changes the host's network)"
  elif [ ! -d /sys/fs/cgroup/memory ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    why="no memory cgroup controller under /sys/fs/cgroup"
  elif ! command -v ip >/dev/null; then
    why="needs iproute2 (ip)"
  else
    local missing=()
    command -v containerd >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    [ -x "$CNI_BIN/bridge" ] && [ -x "$CNI_BIN/portmap" ] || missing+=(containernetworking-plugins)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v umoci >/dev/null || missing+=(umoci)
    [ -x /bin/busybox ] && busybox --list | grep -qx wget || missing+=(busybox-static)
    if [ ${#missing[@]} -gt 0 ]; then
      log "installing ${missing[*]} (apt)"
      if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$LOGS/apt.log" 2>&1; then
        why="apt-get install ${missing[*]} failed (see $LOGS/apt.log)"
      fi
    fi
  fi
  if [ -n "$why" ]; then
    echo "$why" >"$NODE_UNAVAILABLE"
    log "no real node: $why"
    return 1
  fi
}

# Remembers the sysctls the kubelet changes, once, to restore them on the way down.
save_sysctls() {
  [ -f "$NODE_DIR/sysctls" ] && return
  for k in "${SYSCTLS[@]}"; do
    echo "$k=$(sysctl -n "$k")"
  done >"$NODE_DIR/sysctls"
}

node_network() {
  # The node's own address. On the loopback interface: a dummy interface would
  # do as well, but this kernel has no dummy driver (and kernels in containers
  # often cannot load one); any local address is reached the same way.
  ip -4 addr show dev lo | grep -q " $REAL_NODE_IP/" ||
    ip addr add "$REAL_NODE_IP/32" dev lo
  # Pods reach the API server and the test's file server on the node's address,
  # and the kube-proxy's Service routing needs forwarding.
  sysctl -qw net.ipv4.ip_forward=1
  if [ "$(sysctl -n fs.inotify.max_user_instances)" -lt "$INOTIFY_INSTANCES" ]; then
    sysctl -qw fs.inotify.max_user_instances="$INOTIFY_INSTANCES"
  fi
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/state"
  cat >"$NODE_DIR/cni/net.d/10-berth.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    { "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_SUBNET" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$NODE_DIR/cni/state" } },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
    { "type": "loopback" }
  ]
}
CNI
}

node_certs() {
  [ -f "$PKI/node.crt" ] && return
  log "signing the real node's certificates"
  node_sign node "/O=system:nodes/CN=system:node:$REAL_NODE_NAME" "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  node_sign kubelet-serving "/CN=$REAL_NODE_NAME" "subjectAltName=IP:$REAL_NODE_IP,DNS:$REAL_NODE_NAME
extendedKeyUsage=serverAuth
keyUsage=digitalSignature"
  node_kubeconfig node "$PKI/node.crt" "$PKI/node.key"
}

# node_sign NAME SUBJECT EXT: a key and a certificate signed by the cluster CA.
node_sign() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
  rm -f "$PKI/$1.csr" "$PKI/$1.ext"
}

# node_kubeconfig NAME CERT KEY: a kubeconfig for the node's components.
node_kubeconfig() {
  cat >"$NODE_DIR/$1.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$2")
    client-key-data: $(base64 -w0 "$3")
contexts:
- name: $1
  context: {cluster: berth-test, user: $1}
current-context: $1
KCFG
}

containerd_ready() { ctr version >/dev/null 2>&1; }

start_containerd() {
  mkdir -p "$NODE_DIR/containerd"
  cat >"$NODE_DIR/containerd/config.toml" <<TOML
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "berth.local/pause:test"
  # This VM drops CAP_SYS_RESOURCE: lowering oom_score_adj would fail.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$NODE_DIR/cni/net.d"
TOML
  start containerd containerd --config "$NODE_DIR/containerd/config.toml"
  wait_for containerd 30 containerd_ready
}

start_kubelet() {
  local cgroups
  # The kubelet's cgroups go below a root of this cluster's own.
  for cgroups in /sys/fs/cgroup/*/; do
    [ -w "$cgroups" ] && [ "$(basename "$cgroups")" != unified ] && mkdir -p "$cgroups${CGROUP_ROOT#/}"
  done
  mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs"
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host has a cgroup v1 (hybrid) hierarchy and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
address: $REAL_NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $NODE_DIR/pod-logs
failSwapOn: false
maxPods: 40
podCIDR: $POD_SUBNET
registerWithTaints:
- {key: $NODE_TAINT_KEY, value: "true", effect: NoSchedule}
# A shared development machine: do not evict for its disk, and keep the
# locally built images, which no registry could bring back.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
  start kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$NODE_DIR/node.kubeconfig" --root-dir "$NODE_DIR/kubelet" \
    --hostname-override "$REAL_NODE_NAME" --node-ip "$REAL_NODE_IP" \
    --node-labels "type=real,berth.dev/real-node=true" --v=1
  wait_for kubelet 60 curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
}

start_kube_proxy() {
  start kube-proxy "$BIN/kube-proxy" --kubeconfig "$KUBECONFIG_PATH" \
    --hostname-override "$REAL_NODE_NAME" --proxy-mode iptables --cluster-cidr "$POD_SUBNET" \
    --healthz-bind-address "127.0.0.1:$PROXY_HEALTHZ_PORT" --metrics-bind-address "127.0.0.1:$PROXY_METRICS_PORT" \
    --conntrack-max-per-core 0 --v=1
  wait_for kube-proxy 30 curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
}

# metrics-server, for the resource metrics API (metrics.k8s.io): a process on the
# host like the kubelet, scraping the real node's kubelet only (kwok's fake nodes
# have no kubelet to scrape), and served through the API server's aggregation
# layer: an APIService naming a selector-less Service whose endpoint is this
# process (the API server routes to endpoints, --enable-aggregator-routing).
start_metrics_server() {
  mkdir -p "$NODE_DIR/metrics-server"
  start metrics-server "$METRICS_SERVER" --kubeconfig "$KUBECONFIG_PATH" \
    --authentication-kubeconfig "$KUBECONFIG_PATH" --authorization-kubeconfig "$KUBECONFIG_PATH" \
    --bind-address "$REAL_NODE_IP" --secure-port "$METRICS_SERVER_PORT" --cert-dir "$NODE_DIR/metrics-server" \
    --kubelet-insecure-tls --kubelet-use-node-status-port --kubelet-preferred-address-types InternalIP \
    --node-selector "kubernetes.io/hostname=$REAL_NODE_NAME" --metric-resolution 10s --kubelet-request-timeout 5s --v=1
  wait_for metrics-server 30 curl -skf -o /dev/null --max-time 1 "https://$REAL_NODE_IP:$METRICS_SERVER_PORT/livez"
  kubectl apply -f - >/dev/null 2>&1 <<YAML
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec: {ports: [{name: https, port: 443, targetPort: $METRICS_SERVER_PORT}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system}
subsets: [{addresses: [{ip: "$REAL_NODE_IP"}], ports: [{name: https, port: $METRICS_SERVER_PORT}]}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
YAML
  if ! kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=60s >/dev/null 2>&1; then
    log "metrics.k8s.io not available"
    show_log metrics-server
    return 1
  fi
}

wait_node_ready() {
  if ! kubectl wait --for=condition=Ready "node/$REAL_NODE_NAME" --timeout=90s >/dev/null 2>&1; then
    log "$REAL_NODE_NAME not Ready"
    show_log kubelet
    return 1
  fi
}

# --- teardown ------------------------------------------------------------------

# Stops every Pod container this node's containerd runs (they outlive containerd).
stop_containers() {
  is_running containerd || return 0
  local id
  for id in $(ctr tasks ls -q 2>/dev/null); do
    ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for _ in $(seq 1 50); do
    [ -z "$(ctr tasks ls -q 2>/dev/null | head -1)" ] && break
    for id in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$id" >/dev/null 2>&1 || true; done
    sleep 0.1
  done
}

# Network namespaces of this node's Pods (from containerd's sandbox specs).
pod_netns() {
  is_running containerd || return 0
  local id
  for id in $(ctr containers ls -q 2>/dev/null); do
    ctr containers info "$id" 2>/dev/null | grep -o '"/var/run/netns/[^"]*"' | tr -d '"'
  done | sort -u
}

remove_iptables_rules() {
  local table
  for table in nat filter mangle; do
    # CNI's rules carry the network's name in their comment.
    iptables-save -t "$table" 2>/dev/null | grep -- "-A .*$CNI_NETWORK" | sed 's/^-A /-D /' |
      while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
    # Then the chains nothing jumps to any more (CNI's per-container ones).
    iptables-save -t "$table" 2>/dev/null | awk '/^:CNI-(DN|HP|SN)?-?[0-9a-f]/ {print substr($1, 2)}' |
      while read -r chain; do
        iptables -t "$table" -F "$chain" 2>/dev/null && iptables -t "$table" -X "$chain" 2>/dev/null || true
      done
  done
  # portmap's shared chains, once no rule of any network is left in them.
  if ! iptables -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null | grep -q -- '^-A'; then
    for hook in PREROUTING OUTPUT; do
      iptables -t nat -D "$hook" -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null || true
    done
    iptables -t nat -D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ 2>/dev/null || true
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
      iptables -t nat -F "$chain" 2>/dev/null && iptables -t nat -X "$chain" 2>/dev/null || true
    done
  fi
  # kube-proxy's and the kubelet's (KUBE-*), unless another kubelet still runs here.
  if ! ps -eo stat=,comm= | awk '$1 !~ /^Z/ && $2 == "kubelet" {found=1} END {exit !found}'; then
    "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    local ipt
    for ipt in iptables ip6tables; do
      for table in nat filter mangle; do
        "$ipt-save" -t "$table" 2>/dev/null | grep -- '-A .* -j KUBE-' | sed 's/^-A /-D /' |
          while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
        "$ipt-save" -t "$table" 2>/dev/null | awk '/^:KUBE-/ {print substr($1, 2)}' |
          while read -r chain; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done
        "$ipt-save" -t "$table" 2>/dev/null | awk '/^:KUBE-/ {print substr($1, 2)}' |
          while read -r chain; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
      done
    done
  fi
}

remove_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/"${CGROUP_ROOT#/}"; do
    [ -d "$dir" ] || continue
    # Deepest first: a cgroup goes only once it is empty.
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

unmount_below() {
  awk -v root="$1" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

restore_sysctls() {
  [ -f "$NODE_DIR/sysctls" ] || return 0
  while IFS== read -r k v; do sysctl -qw "$k=$v" 2>/dev/null || true; done <"$NODE_DIR/sysctls"
}

# node_down: undoes everything node_up did; safe to run when it never ran, and
# goes on past what fails (a teardown that stops half-way undoes nothing more).
node_down() {
  [ -d "$NODE_DIR" ] || [ -f "$PIDS/kubelet.pid" ] || return 0
  set +e
  local netns
  netns=$(pod_netns)
  # The metrics API goes with its server (an APIService whose server is gone
  # would fail discovery for every client).
  kubectl delete apiservice v1beta1.metrics.k8s.io --ignore-not-found >/dev/null 2>&1
  stop_component metrics-server
  stop_component kube-proxy
  stop_component kubelet
  stop_containers
  stop_component containerd
  # Shims of this containerd that outlived it.
  pkill -9 -f "containerd-shim.*-address $CONTAINERD_SOCK" 2>/dev/null || true
  for ns in $netns; do umount "$ns" 2>/dev/null; rm -f "$ns"; done
  remove_iptables_rules
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  ip addr del "$REAL_NODE_IP/32" dev lo 2>/dev/null || true
  remove_cgroups
  restore_sysctls
  unmount_below "$NODE_DIR"
  rm -rf "$NODE_DIR" "$NODE_UNAVAILABLE"
  set -e
  log "real node down"
}
