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

API_PORT=${API_PORT:-16443}
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
KCM_PORT=${KCM_PORT:-16257}
SCHEDULER_PORT=${SCHEDULER_PORT:-16259}
KWOK_PORT=${KWOK_PORT:-16247}
NODES=${NODES:-3}

# The module proxy is reachable but the checksum database is not: go.sum,
# committed, is what pins the content of every module.
export GOSUMDB=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

# Components in start order; stopped in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

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
