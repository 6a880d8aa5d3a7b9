#!/usr/bin/env bash
# Brings up the test control plane: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok, then $NODES fake nodes, then (REAL_NODE=1, the default)
# one real node with containerd, a kubelet and kube-proxy (node.sh). Idempotent:
# what is already running is left alone, so on a healthy cluster it only reports.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_SRC/node.sh"

"$CLUSTER_SRC/build.sh"
mkdir -p "$PKI" "$PIDS" "$LOGS" "$CLUSTER_DIR/etcd"
start_time=$SECONDS

# --- certificates ------------------------------------------------------------
gen_pki() {
  [ -f "$PKI/admin.crt" ] && return
  log "generating CA, serving, admin and service-account keys"
  local tmp
  tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=berth-test-ca" -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
  # sign NAME SUBJECT EXT: a key and a certificate signed by the CA.
  sign() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "$2" -keyout "$tmp/$1.key" -out "$tmp/$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
      -days 3650 -extfile "$tmp/$1.ext" -out "$tmp/$1.crt" 2>/dev/null
  }
  sign serving "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$REAL_NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
keyUsage=digitalSignature"
  # The API server's identity towards kubelets (logs, attach, exec).
  sign kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  sign admin "/O=system:masters/CN=berth-admin" "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  # kwok serves its fake kubelets' API (logs, attach) over HTTPS.
  sign kwok-serving "/CN=kwok" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth
keyUsage=digitalSignature"
  openssl genrsa -out "$tmp/sa.key" 2048 2>/dev/null
  openssl rsa -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub" 2>/dev/null
  cp "$tmp"/{ca.crt,ca.key,serving.crt,serving.key,admin.crt,admin.key,kubelet-client.crt,kubelet-client.key,kwok-serving.crt,kwok-serving.key,sa.key,sa.pub} "$PKI/"
  rm -rf "$tmp"
}

# The aggregation layer's identity: the API server proxies metrics.k8s.io to
# metrics-server as front-proxy-client, signed by a CA of its own.
gen_front_proxy_pki() {
  [ -f "$PKI/front-proxy-client.crt" ] && return
  local tmp
  tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=berth-test-front-proxy-ca" -keyout "$tmp/front-proxy-ca.key" -out "$tmp/front-proxy-ca.crt" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=front-proxy-client" -keyout "$tmp/front-proxy-client.key" -out "$tmp/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n' >"$tmp/client.ext"
  openssl x509 -req -in "$tmp/client.csr" -CA "$tmp/front-proxy-ca.crt" -CAkey "$tmp/front-proxy-ca.key" \
    -CAcreateserial -days 3650 -extfile "$tmp/client.ext" -out "$tmp/front-proxy-client.crt" 2>/dev/null
  cp "$tmp"/{front-proxy-ca.crt,front-proxy-client.crt,front-proxy-client.key} "$PKI/"
  rm -rf "$tmp"
}

write_kubeconfig() {
  [ -f "$KUBECONFIG_PATH" ] && return
  cat >"$KUBECONFIG_PATH.tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: berth-admin
  user:
    client-certificate-data: $(base64 -w0 "$PKI/admin.crt")
    client-key-data: $(base64 -w0 "$PKI/admin.key")
contexts:
- name: berth-test
  context: {cluster: berth-test, user: berth-admin}
current-context: berth-test
KCFG
  mv "$KUBECONFIG_PATH.tmp" "$KUBECONFIG_PATH"
}

# --- components --------------------------------------------------------------
start_etcd() {
  # No fsync: this etcd holds test data only and must not make tests wait on disks.
  start etcd "$BIN/etcd" --name berth-test --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "berth-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=8589934592 --log-level=warn
  wait_for etcd 30 curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$ETCD_PORT/health"
}

start_kube_apiserver() {
  # Loopback only, unless the real node's Pods must reach it (Berth itself runs
  # there from its chart); then on every address, still TLS with client
  # certificates or tokens, and no anonymous access. The endpoint reconciler is
  # off: the kubernetes Service's endpoints may not hold a loopback address, so
  # up.sh writes them (the real node's address) itself.
  local bind=127.0.0.1
  [ "$REAL_NODE" = 1 ] && bind=0.0.0.0
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$bind" --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --anonymous-auth=false \
    --tls-cert-file "$PKI/serving.crt" --tls-private-key-file "$PKI/serving.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins ServiceAccount,NamespaceLifecycle,LimitRanger,ResourceQuota,NodeRestriction \
    --kubelet-client-certificate "$PKI/kubelet-client.crt" --kubelet-client-key "$PKI/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --allow-privileged=true --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --v=1
  wait_for kube-apiserver 60 api_ready
  write_kubeconfig
}

start_kube_controller_manager() {
  # The host-path provisioner (Kubernetes' own, for single-machine testing) gives
  # the real node's game servers volume claims whose data outlives their Pods:
  # storage class berth-test-hostpath (see write_storage_class).
  # Berth's CRDs go in first: the garbage collector watches the resource types it
  # finds at start and picks up new ones only on its periodic discovery resync
  # (about 30 s, sometimes two rounds), so Instances deleted before that would
  # keep their Pods and claims for a minute or more.
  if [ -d "$REPO_ROOT/crds" ]; then
    kubectl apply --server-side --field-manager berth -f "$REPO_ROOT/crds" >/dev/null
    kubectl wait --for condition=Established --timeout=30s -f "$REPO_ROOT/crds" >/dev/null
  fi
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_PATH" \
    --authentication-kubeconfig "$KUBECONFIG_PATH" --authorization-kubeconfig "$KUBECONFIG_PATH" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials --controllers '*' \
    --enable-hostpath-provisioner \
    --kube-api-qps 200 --kube-api-burst 400 --concurrent-gc-syncs 20 --v=1
  wait_for kube-controller-manager 60 curl -skf -o /dev/null --max-time 1 "https://127.0.0.1:$KCM_PORT/healthz"
}

start_kube_scheduler() {
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIG_PATH" \
    --authentication-kubeconfig "$KUBECONFIG_PATH" --authorization-kubeconfig "$KUBECONFIG_PATH" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
    --kube-api-qps 500 --kube-api-burst 1000 --v=1
  wait_for kube-scheduler 60 curl -skf -o /dev/null --max-time 1 "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}

start_kwok() {
  # A restarted kwok cannot adopt the node Leases of its predecessor; without
  # renewals the node lifecycle controller would mark the nodes NotReady.
  # (A real kubelet recreates its own at once.)
  kubectl -n kube-node-lease delete lease --all --ignore-not-found >/dev/null 2>&1 || true
  # What every fake game server's console shows, and per-Pod overrides (Logs and
  # Attach objects, whose CRDs come with kwok's module).
  mkdir -p "$CLUSTER_DIR/kwok"
  # In the CRI log format, which kwok reads: time, stream, tag (F: full line), text.
  local at
  at=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
  printf '%s stdout F %s\n' "$at" "[00:00:00] [Server thread/INFO]: Starting Berth stand-in game server (kwok) on *:25565" \
    "$at" '[00:00:00] [Server thread/INFO]: Done (0.001s)! For help, type "help"' >"$CLUSTER_DIR/kwok/console.log"
  sed -e "s|@KWOK_PORT@|$KWOK_PORT|" -e "s|@PKI@|$PKI|g" -e "s|@CONSOLE@|$CLUSTER_DIR/kwok/console.log|" \
    "$CLUSTER_SRC/kwok.yaml" >"$CLUSTER_DIR/kwok/kwok.yaml"
  kubectl apply --server-side -f "$(kwok_crds)/kwok.x-k8s.io_logs.yaml" -f "$(kwok_crds)/kwok.x-k8s.io_attaches.yaml" >/dev/null
  # Every address: the API server dials each fake node's own (127.0.10.N).
  start kwok "$BIN/kwok" --kubeconfig "$KUBECONFIG_PATH" --config "$CLUSTER_DIR/kwok/kwok.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --server-address "0.0.0.0:$KWOK_PORT" --enable-crds Logs,Attach
  wait_for kwok 30 curl -skf -o /dev/null --max-time 1 "https://127.0.0.1:$KWOK_PORT/healthz"
}

# The folder of kwok's CRDs, in its module (in the Go module cache, fetched if not).
kwok_crds() {
  local dir
  dir=$(cd /tmp && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  echo "$dir/kustomize/crd/bases"
}

# --- nodes -------------------------------------------------------------------
node_manifest() {
  local i=$1
  cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
    # Loopback addresses: nothing real answers there, and nothing leaves the machine.
    berth.dev/test-node-ip: 127.0.10.$i
spec: {}
NODE
}

create_nodes() {
  local i missing=()
  for i in $(seq 1 "$NODES"); do
    kubectl get node "kwok-node-$i" >/dev/null 2>&1 || missing+=("$i")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "creating fake nodes: ${missing[*]}"
  for i in "${missing[@]}"; do node_manifest "$i"; echo "---"; done | kubectl create -f - >/dev/null
}

wait_nodes_ready() {
  if ! kubectl wait --for=condition=Ready node -l type=kwok --timeout=60s >/dev/null; then
    log "fake nodes not Ready"
    show_log kwok
    return 1
  fi
}

gen_pki
gen_front_proxy_pki
started=()
for c in "${COMPONENTS[@]}"; do
  if is_running "$c"; then
    continue
  fi
  "start_${c//-/_}"
  started+=("$c")
done
write_kubeconfig
create_nodes
wait_nodes_ready

# --- the real node ---------------------------------------------------------------
# A storage class whose claims the controller manager provisions as directories
# under /tmp/hostpath_pv on this machine (removed with their claims).
write_storage_class() {
  kubectl apply -f - >/dev/null <<SC
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: berth-test-hostpath}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
SC
}

# The kubernetes Service's endpoints: the API server on the real node's address.
write_api_endpoints() {
  kubectl apply -f - >/dev/null <<EPS
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: berth-test-cluster}
addressType: IPv4
endpoints: [{addresses: ["$REAL_NODE_IP"], conditions: {ready: true}}]
ports: [{name: https, port: $API_PORT, protocol: TCP}]
EPS
}

node_up() {
  mkdir -p "$NODE_DIR"
  save_sysctls
  node_network
  node_certs
  is_running containerd || { start_containerd; started+=(containerd); }
  "$CLUSTER_SRC/images.sh" import
  is_running kubelet || { start_kubelet; started+=(kubelet); }
  write_api_endpoints
  write_storage_class
  is_running kube-proxy || { start_kube_proxy; started+=(kube-proxy); }
  wait_node_ready
  is_running metrics-server || { start_metrics_server; started+=(metrics-server); }
}

real="no real node"
if [ "$REAL_NODE" = 1 ]; then
  if node_preflight; then
    node_up
    real="$REAL_NODE_NAME Ready at $REAL_NODE_IP"
  else
    real="no real node ($(cat "$NODE_UNAVAILABLE"))"
  fi
fi

ready=$(kubectl get nodes -l type=kwok --no-headers | wc -l)
if [ ${#started[@]} -eq 0 ]; then
  log "control plane already running; nothing changed ($ready fake nodes Ready; $real)"
else
  log "started ${started[*]} in $((SECONDS - start_time))s ($ready fake nodes Ready; $real)"
fi
echo "export KUBECONFIG=$KUBECONFIG_PATH"
