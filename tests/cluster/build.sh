#!/usr/bin/env bash
# Builds the control plane binaries when (and only when) their inputs changed.
# The binaries are kept in the user's cache folder under a key made of every
# input (go.mod, go.sum, sources, versions, Go version), so a fresh clone on
# the same machine (CI) links to them without building anything.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

inputs_key() {
  {
    cat "$CLUSTER_SRC/go.mod" "$CLUSTER_SRC/go.sum"
    find "$CLUSTER_SRC/cmd" -type f -name '*.go' | sort | xargs cat
    echo "$K8S_VERSION $KWOK_VERSION $HELM_VERSION $(go version)"
    sed -n '/^build_all()/,/^}/p' "${BASH_SOURCE[0]}"
  } | sha256sum | cut -c1-16
}

build_all() {
  local out=$1 minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building kube-apiserver, controller-manager, scheduler, kubectl and etcd ($K8S_VERSION)"
  (cd "$CLUSTER_SRC" && go build -trimpath -ldflags "$ldflags" -o "$out/k8s" ./cmd/k8s)
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    ln -sf k8s "$out/$c"
  done
  log "installing kwok $KWOK_VERSION and helm $HELM_VERSION"
  GOBIN=$out go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # helm template and helm lint assume the Kubernetes version of the test cluster.
  local helm_flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  GOBIN=$out go install -trimpath -ldflags "$helm_flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

key=$(inputs_key)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/berth/cluster-bin/$key
if [ ! -x "$cache/helm" ]; then
  start=$SECONDS
  rm -rf "$cache.tmp"
  mkdir -p "$cache.tmp"
  build_all "$cache.tmp"
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
  log "built in $((SECONDS - start))s into $cache"
  # Builds for inputs that changed since are not needed any more.
  find "$(dirname "$cache")" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
fi
mkdir -p "$CLUSTER_DIR"
[ -L "$BIN" ] || rm -rf "$BIN"
ln -sfn "$cache" "$BIN"

# metrics-server (the resource metrics API, for Berth's stats): its own modules
# (an older Kubernetes than the control plane's), so its own cache, keyed by its
# version and the Go version; changing the control plane does not rebuild it.
ms_key=$(echo "$METRICS_SERVER_VERSION $(go version)" | sha256sum | cut -c1-16)
ms_cache=${XDG_CACHE_HOME:-$HOME/.cache}/berth/metrics-server/$ms_key
if [ ! -x "$ms_cache/metrics-server" ]; then
  start=$SECONDS
  log "building metrics-server $METRICS_SERVER_VERSION"
  rm -rf "$ms_cache.tmp"
  mkdir -p "$ms_cache.tmp"
  GOBIN=$ms_cache.tmp go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
  rm -rf "$ms_cache"
  mv "$ms_cache.tmp" "$ms_cache"
  log "built metrics-server in $((SECONDS - start))s"
  find "$(dirname "$ms_cache")" -mindepth 1 -maxdepth 1 -type d ! -name "$ms_key" -exec rm -rf {} +
fi
ln -sfn "$ms_cache/metrics-server" "$METRICS_SERVER"
