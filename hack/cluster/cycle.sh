#!/usr/bin/env bash
# cycle.sh (make cluster-cycle) brings the local cluster up and down N times in a row (default 3)
# and proves each cycle: up twice (the second finds everything running), a Pod runs, and down
# leaves nothing behind (down.sh fails otherwise). In the second cycle the cluster "crashes"
# first: every component, containerd and its shims are killed with SIGKILL, and down.sh must
# clean up after that too. A cluster that was running before is brought down first and up again
# at the end (with fresh state).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root cluster-cycle
take_lock

n=${1:-3}
up() { "$CLUSTER_ROOT/hack/cluster/up.sh" >/dev/null; }
down() { "$CLUSTER_ROOT/hack/cluster/down.sh"; }
kc() { "$(bin kubectl)" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

run_pod() {
  local name=cycle-$1
  kc run "$name" --image docker.io/metaparticle/sync-pause:1.0 --image-pull-policy Never \
    --restart Never >/dev/null
  kc wait --for=condition=Ready "pod/$name" --timeout=120s >/dev/null
  log "pod $name runs at $(kc get pod "$name" -o jsonpath='{.status.podIP}')"
  all_running
}

crash() {
  local pids
  mapfile -t pids < <(our_pids "")
  kill -KILL "${pids[@]}"
  log "killed ${#pids[@]} process(es) of the cluster with SIGKILL; its Pods' processes keep running"
}

was_up=0
if pid_of kube-apiserver >/dev/null || pid_of kubelet >/dev/null || pid_of containerd >/dev/null; then
  was_up=1
  step "a cluster is running: cluster-down first" down
fi

for i in $(seq 1 "$n"); do
  start=$SECONDS
  step "cycle $i/$n: cluster-up" up
  [ "$i" != 1 ] || step "cycle $i/$n: cluster-up again (idempotent)" up
  step "cycle $i/$n: a Pod runs" run_pod "$i"
  [ "$i" != 2 ] || step "cycle $i/$n: crash" crash
  step "cycle $i/$n: cluster-down" down
  log "cycle $i/$n: done in $((SECONDS - start))s"
done
[ $was_up = 0 ] || step "bringing the cluster that was running back up" up
