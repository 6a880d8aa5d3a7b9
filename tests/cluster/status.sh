#!/usr/bin/env bash
# Reports each component and the fake nodes; exits 0 only when all are up.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ok=0
for c in "${COMPONENTS[@]}"; do
  if is_running "$c"; then
    printf '%-24s running (pid %s)\n' "$c" "$(pid_of "$c")"
  else
    printf '%-24s stopped\n' "$c"
    ok=1
  fi
done
if [ "$REAL_NODE" = 1 ] && [ ! -f "$NODE_UNAVAILABLE" ]; then
  for c in "${NODE_COMPONENTS[@]}"; do
    if is_running "$c"; then
      printf '%-24s running (pid %s)\n' "$c" "$(pid_of "$c")"
    else
      printf '%-24s stopped\n' "$c"
      ok=1
    fi
  done
elif [ -f "$NODE_UNAVAILABLE" ]; then
  printf '%-24s unavailable: %s\n' "real node" "$(cat "$NODE_UNAVAILABLE")"
fi
if [ $ok -eq 0 ] && api_ready; then
  kubectl get nodes -l 'type in (kwok,real)'
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
else
  ok=1
fi
exit $ok
