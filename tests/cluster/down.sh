#!/usr/bin/env bash
# Stops the processes that up.sh started (only those, by their pid files), undoes
# what the real node changed on the host (see node.sh), and removes the cluster's
# state. Logs are kept for post-mortems; binaries stay cached.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_SRC/node.sh"

# The real node first: it undoes what it changed on the host.
node_down
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop_component "${COMPONENTS[$i]}"
done
rm -rf "$PKI" "$PIDS" "$CLUSTER_DIR/etcd" "$KUBECONFIG_PATH"
log "control plane down"
