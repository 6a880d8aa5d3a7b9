#!/usr/bin/env bash
# make run: Berth against the cluster KUBECONFIG names when it is reachable,
# otherwise against the local test control plane (brought up when needed: kwok's
# fake nodes only, or with REAL_NODE=1 also the real node, which runs the stand-in
# game server for real). Installs the CRDs and the shipped image catalog, makes an
# API key for local use (kept in target/dev-api-key), prints how to call the API,
# then runs berth serve.
set -euo pipefail
cd "$(dirname "$0")/.."
berth=target/debug/berth
export BERTH_NAMESPACE=${BERTH_NAMESPACE:-berth}
port=${BERTH_PORT:-8080}
real_node=${REAL_NODE:-0}
catalogs=(--from-file=charts/berth/catalog)
serve_args=()

if [ -n "${KUBECONFIG:-}" ] && timeout 20 "$berth" --log-format human crd --apply; then
  echo "[run] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  [ -n "${KUBECONFIG:-}" ] && echo "[run] KUBECONFIG=$KUBECONFIG is not reachable; using the local control plane" >&2
  REAL_NODE=$real_node tests/cluster/up.sh >/dev/null
  export KUBECONFIG=$PWD/target/cluster/kubeconfig
  "$berth" --log-format human crd --apply
fi
kubectl=$(command -v kubectl || echo target/cluster/bin/kubectl)
"$kubectl" get namespace "$BERTH_NAMESPACE" >/dev/null 2>&1 || "$kubectl" create namespace "$BERTH_NAMESPACE" >/dev/null
if [ "$real_node" = 1 ] && [ "$KUBECONFIG" = "$PWD/target/cluster/kubeconfig" ]; then
  if [ -f target/cluster/real-node.unavailable ]; then
    echo "[run] no real node: $(cat target/cluster/real-node.unavailable)" >&2
    exit 1
  fi
  node_ip=$("$kubectl" get node real-node-1 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  # The stand-in game server's catalog entry and install file, and what lets
  # Berth place game servers on the real node.
  catalogs+=(--from-file=tests/cluster/catalog)
  serve_args=(--init-image berth.local/install:test
    --instance-tolerations '[{"key":"berth.dev/real-node","operator":"Exists","effect":"NoSchedule"}]')
  files=target/run-files
  mkdir -p "$files" && echo "stand-in install file" >"$files/standin.jar"
  python3 -m http.server 8099 --bind "$node_ip" --directory "$files" >/dev/null 2>&1 &
  files_pid=$!
fi
"$kubectl" -n "$BERTH_NAMESPACE" create configmap berth-catalog "${catalogs[@]}" \
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
if [ -n "${node_ip:-}" ]; then
  cat >&2 <<MSG
[run] real node: real-node-1 at $node_ip; a game server that runs for real:
                 curl -s -H 'x-api-key: $key' -H 'content-type: application/json' \\
                   -d '{"name":"real","address":"$node_ip"}' http://127.0.0.1:$port/api/nodes/create    # -> node id
                 curl -s -H 'x-api-key: $key' -H 'content-type: application/json' \\
                   -d '{"image":"Berth stand-in game server","memory":128,"cpu":0.5,"ports":"25565","primary":25565,
                        "nodeId":"<node id>","name":"standin","user":"<userId>","variables":{"INSTALL_FROM":"$node_ip:8099"}}' \\
                   http://127.0.0.1:$port/api/instances/deploy
                 nc $node_ip 25565    # it answers; its console: kubectl -n $BERTH_NAMESPACE logs -f <Id>
MSG
fi
# In the background, so that this script's signals reach it (and the file server).
"$berth" --log-format human serve --listen "127.0.0.1:$port" "${serve_args[@]}" &
berth_pid=$!
trap 'kill $berth_pid ${files_pid:-} 2>/dev/null; wait $berth_pid' INT TERM EXIT
wait $berth_pid
