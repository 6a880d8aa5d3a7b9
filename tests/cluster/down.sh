#!/usr/bin/env bash
# Stops the processes that up.sh started (only those, by their pid files) and
# removes the cluster's state. Logs are kept for post-mortems; binaries stay cached.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  c=${COMPONENTS[$i]}
  pid=$(pid_of "$c")
  [ -n "$pid" ] || continue
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $c (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$c.pid"
done
rm -rf "$PKI" "$PIDS" "$CLUSTER_DIR/etcd" "$KUBECONFIG_PATH"
log "control plane down"
