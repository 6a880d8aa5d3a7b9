#!/usr/bin/env bash
# Removes what earlier test and benchmark runs left on a running control plane
# (their namespaces, and the fake nodes they made), so that host ports and names
# they used are free again. Waits until it is gone.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kubectl delete namespace -l 'berth.dev/test=true' --ignore-not-found --wait=true --timeout=120s >/dev/null
kubectl delete namespace -l 'berth.dev/bench=true' --ignore-not-found --wait=true --timeout=120s >/dev/null
kubectl delete node -l 'type in (kwok-test,kwok-bench)' --ignore-not-found >/dev/null
