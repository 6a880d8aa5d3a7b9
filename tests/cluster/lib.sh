# Shared settings and helpers for the test control plane scripts (sourced).
# Everything lives under $CLUSTER_DIR (default: <repo>/target/cluster):
#   bin/        the built binaries (a link into the build cache, see build.sh)
#   kubeconfig  the admin kubeconfig (export KUBECONFIG=...)
#   pki/ etcd/ pids/   state, removed by cluster-down
#   logs/       one log per component, kept after cluster-down for post-mortems
set -euo pipefail

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_SRC/../.." && pwd)
CLUSTER_DIR=${CLUSTER_DIR:-$REPO_ROOT/target/cluster}
BIN=$CLUSTER_DIR/bin
PKI=$CLUSTER_DIR/pki
PIDS=$CLUSTER_DIR/pids
LOGS=$CLUSTER_DIR/logs
KUBECONFIG_PATH=$CLUSTER_DIR/kubeconfig

# Pinned versions. The Kubernetes version is also what the binary reports.
K8S_VERSION=v1.36.5
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
METRICS_SERVER_VERSION=v0.8.0

API_PORT=${API_PORT:-16443}
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
KCM_PORT=${KCM_PORT:-16257}
SCHEDULER_PORT=${SCHEDULER_PORT:-16259}
KWOK_PORT=${KWOK_PORT:-16247}
NODES=${NODES:-3}

# The real node: a kubelet with containerd (1 = on; `make run` sets 0 unless
# REAL_NODE=1). Everything it creates on the host is named after NET_ID, which
# derives from the API port, so that a second cluster on the same machine (with
# other ports) uses other names, addresses and ports.
REAL_NODE=${REAL_NODE:-1}
REAL_NODE_NAME=real-node-1
NET_ID=$((API_PORT % 200 + 20))
REAL_NODE_IP=${REAL_NODE_IP:-172.31.$NET_ID.1}
POD_SUBNET=10.244.$NET_ID.0/24
NODE_BRIDGE=berthbr$NET_ID         # CNI bridge of the node's Pods
CNI_NETWORK=berth-$NET_ID          # CNI network name (tags its iptables rules)
CGROUP_ROOT=/berth$NET_ID          # the kubelet's cgroups live below this
KUBELET_PORT=${KUBELET_PORT:-$((API_PORT + 20))}
KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-$((API_PORT + 21))}
PROXY_HEALTHZ_PORT=${PROXY_HEALTHZ_PORT:-$((API_PORT + 22))}
PROXY_METRICS_PORT=${PROXY_METRICS_PORT:-$((API_PORT + 23))}
METRICS_SERVER_PORT=${METRICS_SERVER_PORT:-$((API_PORT + 24))}
# metrics-server, built apart from the control plane (its own module versions
# and cache: see build.sh).
METRICS_SERVER=$CLUSTER_DIR/metrics-server
NODE_DIR=$CLUSTER_DIR/node
CONTAINERD_SOCK=$NODE_DIR/containerd/containerd.sock
# Why the real node cannot run here, when it cannot (one line; tests read it).
NODE_UNAVAILABLE=$CLUSTER_DIR/real-node.unavailable
# Taint of the real node: only Pods that tolerate it (Berth's instances in the
# real-node tests, Berth itself from its chart) land there.
NODE_TAINT_KEY=berth.dev/real-node

# The module proxy is reachable but the checksum database is not: go.sum,
# committed, is what pins the content of every module.
export GOSUMDB=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

# Components in start order; stopped in reverse. The real node's come last.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODE_COMPONENTS=(containerd kubelet kube-proxy metrics-server)

ctr() { command ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

log() { printf '[cluster] %s\n' "$*" >&2; }

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

is_running() {
  local pid state
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # A killed process stays a zombie until it is reaped: not running.
  state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  [ "$state" != Z ]
}

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

api_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

# start NAME CMD...: runs CMD in its own session with its log and pid file.
start() {
  local name=$1
  shift
  log "starting $name"
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# stop_component NAME: SIGTERM, then SIGKILL after 5 s; forgets its pid file.
stop_component() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do is_running "$1" || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$1.pid"
}

# Prints the last lines of a component's log, for when it does not come up.
show_log() {
  log "last lines of $LOGS/$1.log:"
  tail -n 40 "$LOGS/$1.log" >&2 || true
}

# wait_for NAME SECONDS CMD...: polls CMD every 0.2 s; on timeout shows NAME's log and fails.
wait_for() {
  local name=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if ! is_running "$name"; then
      log "$name exited while starting"
      show_log "$name"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name not ready after ${secs}s"
      show_log "$name"
      return 1
    fi
    sleep 0.2
  done
}
