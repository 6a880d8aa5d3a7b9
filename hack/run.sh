#!/usr/bin/env bash
# make run: Berth against the cluster KUBECONFIG names when it is reachable,
# otherwise against the local test control plane (brought up when needed).
# Installs the CRDs and the shipped image catalog, makes an API key for local use
# (kept in target/dev-api-key), prints how to call the API, then runs berth serve.
set -euo pipefail
cd "$(dirname "$0")/.."
berth=target/debug/berth
export BERTH_NAMESPACE=${BERTH_NAMESPACE:-berth}
port=${BERTH_PORT:-8080}

if [ -n "${KUBECONFIG:-}" ] && timeout 20 "$berth" --log-format human crd --apply; then
  echo "[run] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  [ -n "${KUBECONFIG:-}" ] && echo "[run] KUBECONFIG=$KUBECONFIG is not reachable; using the local control plane" >&2
  tests/cluster/up.sh >/dev/null
  export KUBECONFIG=$PWD/target/cluster/kubeconfig
  "$berth" --log-format human crd --apply
fi
kubectl=$(command -v kubectl || echo target/cluster/bin/kubectl)
"$kubectl" get namespace "$BERTH_NAMESPACE" >/dev/null 2>&1 || "$kubectl" create namespace "$BERTH_NAMESPACE" >/dev/null
"$kubectl" -n "$BERTH_NAMESPACE" create configmap berth-catalog --from-file=charts/berth/catalog \
  --dry-run=client -o yaml | "$kubectl" label --local -f - berth.dev/catalog=true -o yaml \
  | "$kubectl" apply -f - >/dev/null

# The key is stored hashed in the cluster; its plaintext only here, for you.
keyfile=target/dev-api-key
if [ ! -s "$keyfile" ] || ! "$kubectl" -n "$BERTH_NAMESPACE" get secret berth-apikey-dev >/dev/null 2>&1; then
  "$berth" apikey revoke dev >/dev/null 2>&1 || true
  "$berth" apikey create --name dev 2>/dev/null >"$keyfile"
fi
key=$(cat "$keyfile")

cat >&2 <<MSG
[run] Berth API: http://127.0.0.1:$port   (namespace $BERTH_NAMESPACE; Ctrl-C stops it, 'make cluster-down' stops the control plane)
[run] API key:   $key   (also in $keyfile)
[run] try:       curl -s -H 'x-api-key: $key' http://127.0.0.1:$port/api/images
[run]            curl -s -H 'x-api-key: $key' -H 'content-type: application/json' \\
                   -d '{"username":"steve","email":"steve@example.com","password":"change-me-now"}' http://127.0.0.1:$port/api/users/create
MSG
exec "$berth" --log-format human serve --listen "127.0.0.1:$port"
