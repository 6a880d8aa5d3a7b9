#!/usr/bin/env bash
# with-cluster.sh CMD...: runs CMD with KUBECONFIG pointing at the test control
# plane, bringing it up first when it is not running and taking down afterwards
# only what this script brought up.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

started=0
if ! "$CLUSTER_SRC/status.sh" >/dev/null 2>&1; then
  [ -d "$PIDS" ] && "$CLUSTER_SRC/down.sh"   # leftovers of a crashed run
  "$CLUSTER_SRC/up.sh" >/dev/null
  started=1
fi
cleanup() {
  local rc=$?
  if [ $started -eq 1 ]; then "$CLUSTER_SRC/down.sh" || true; fi
  exit $rc
}
trap cleanup EXIT
export KUBECONFIG=$KUBECONFIG_PATH BERTH_CLUSTER_BIN=$BIN
"$@"
