#!/usr/bin/env bash
# make run: Berth against the cluster KUBECONFIG names when it is reachable,
# otherwise against the local test control plane (brought up when needed).
set -euo pipefail
cd "$(dirname "$0")/.."
berth=target/debug/berth
namespace=${BERTH_NAMESPACE:-berth}

if [ -n "${KUBECONFIG:-}" ] && timeout 20 "$berth" --log-format human crd --apply; then
  echo "[run] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  [ -n "${KUBECONFIG:-}" ] && echo "[run] KUBECONFIG=$KUBECONFIG is not reachable; using the local control plane" >&2
  tests/cluster/up.sh >/dev/null
  export KUBECONFIG=$PWD/target/cluster/kubeconfig
  "$berth" --log-format human crd --apply
fi
kubectl=$(command -v kubectl || echo target/cluster/bin/kubectl)
"$kubectl" get namespace "$namespace" >/dev/null 2>&1 || "$kubectl" create namespace "$namespace"
echo "[run] berth serve on http://127.0.0.1:${BERTH_PORT:-8080} in namespace $namespace (Ctrl-C stops it; 'make cluster-down' stops the control plane)" >&2
exec "$berth" serve --listen "127.0.0.1:${BERTH_PORT:-8080}" --namespace "$namespace"
