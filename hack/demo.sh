#!/usr/bin/env bash
# demo.sh (make demo) shows the whole product on the local single-node cluster: it starts the
# cluster (hack/cluster/up.sh), cert-manager's controllers and the chart (hack/stack.sh), deploys
# the seed's lock example (2 replicas) and election example (3 replicas) as annotated Deployments
# in namespace "demo", shows who holds the lock "test" and who is master with their fencing tokens
# (bin/syncctl), deletes the master Pod and measures the failover, then restarts the election
# Deployment and measures every handoff. At the end, or on Ctrl-C, it removes everything it
# started (the cluster too, unless it was already running). Root is required.
#
# Environment: DEMO_KEEP=1 leaves everything running at the end (make cluster-down stops it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/hack/cluster/lib.sh"

if [ "$(id -u)" -ne 0 ]; then
  echo "make demo needs root: it starts a real single-node Kubernetes cluster on this machine" >&2
  echo "(containerd, kubelet, a bridge, iptables rules, cgroups). Run it as root, e.g. sudo make demo." >&2
  exit 1
fi

NS=demo
T0=${EPOCHREALTIME/./}
now_us() { echo "${EPOCHREALTIME/./}"; }
clock() {
  local d=$(($(now_us) - T0))
  printf '%d:%02d' $((d / 60000000)) $(((d / 1000000) % 60))
}
say() { printf '\033[1m[demo %s]\033[0m %s\n' "$(clock)" "$*"; }
info() { printf '             %s\n' "$*"; }
# secs MICROSECONDS prints them as seconds with 2 decimals.
secs() { printf '%d.%02d' $(($1 / 1000000)) $((($1 / 10000) % 100)); }

KUBECTL=$(bin kubectl)
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
SYNCCTL=$ROOT/bin/syncctl
sc() { "$SYNCCTL" --kubeconfig "$KUBECONFIG_FILE" -n "$NS" "$@"; }

was_up=0
if [ -f "$ENV_FILE" ] && pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null; then was_up=1; fi
started=0 bg=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${DEMO_KEEP:-}" = 1 ] && [ $rc = 0 ]; then
    say "DEMO_KEEP=1: everything stays up; make cluster-down stops it"
    exit 0
  fi
  [ $started = 1 ] || exit $rc
  say "cleaning up: namespace $NS, helm uninstall, cert-manager controllers$([ $was_up = 1 ] || echo ', cluster')"
  if [ -f "$ENV_FILE" ]; then
    kc delete namespace "$NS" --ignore-not-found --wait --timeout 60s >/dev/null 2>&1 || true
    "$ROOT/hack/stack.sh" down 2>&1 | sed -E 's/^\[(cluster|stack) +[0-9.]+s\] /             /' || rc=1
  fi
  if [ $was_up = 0 ]; then
    "$ROOT/hack/cluster/down.sh" 2>&1 | grep -E 'ERROR|left behind|nothing of the cluster|cluster down in' |
      sed -E 's/^\[(cluster|stack) +[0-9.]+s\] /             /' || true
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  else
    info "the cluster was running before make demo: it stays up (make cluster-down stops it)"
  fi
  say "done in $(clock) (exit status $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

# progress DESCRIPTION CMD...: runs CMD with its log lines shown indented, only its steps' timings.
progress() {
  local desc=$1
  shift
  say "$desc"
  "$@" 2>&1 | grep --line-buffered -E 'done in|ERROR|left behind|cert-manager controllers and cainjector: pid|cluster up in' |
    sed -u -E 's/^\[(cluster|stack) +[0-9.]+s\] /             /'
}

# holder KIND prints "POD TOKEN" of the Lease "test" of that kind (lock or election), "- -" when
# nobody holds it. It reads syncctl's JSON (one item: the name filter is applied below).
holder() {
  local cmd=locks
  [ "$1" = election ] && cmd=elections
  sc "$cmd" -o json 2>/dev/null | tr -d ' ",' | awk -F: '
    /^name:/ {n = $2} /^held:/ {h = $2} /^pod:/ {p = $2} /^token:/ {t = $2}
    /^}/ { if (n == "test" && h == "true") {print p, t; found = 1; exit} }
    END { if (!found) print "- -" }'
}

SECONDS=0
say "Metaparticle Sync demo: a real single-node Kubernetes cluster on this machine (root; nothing leaves it)"
started=1
progress "starting the local cluster (hack/cluster/up.sh; the first run builds Kubernetes, ~10 min)" \
  "$ROOT/hack/cluster/up.sh"
say "building bin/syncctl (the CLI that shows who holds what)"
mkdir -p "$ROOT/bin"
(cd "$ROOT" && go build -o bin/syncctl ./cmd/syncctl)
progress "cert-manager (real controllers, host process) and helm install of charts/metaparticle-sync" \
  "$ROOT/hack/stack.sh" up --bind "$NS"

say "deploying the seed's examples in namespace $NS, annotated metaparticle.io/sync: \"true\":"
info "lock:     2 replicas take turns holding the lock \"test\" (hold 10s, pause 2s)"
info "election: 3 replicas elect a master for \"test\""
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n "$NS" apply -f "$ROOT/hack/demo/workloads.yaml" >/dev/null
kc -n "$NS" rollout status deployment/lock deployment/election --timeout 120s >/dev/null
pod=$(kc -n "$NS" get pods -l app=lock -o jsonpath='{.items[0].metadata.name}')
info "each Pod got the side-car as a native side-car (init container, restartPolicy Always):"
info "  $pod: init containers [$(kc -n "$NS" get pod "$pod" -o jsonpath='{range .spec.initContainers[*]}{.name} (restartPolicy {.restartPolicy}){end}')], containers [$(kc -n "$NS" get pod "$pod" -o jsonpath='{.spec.containers[*].name}')]"
kc -n "$NS" get pods | sed 's/^/               /'

say "who holds what (bin/syncctl locks / elections -n $NS):"
sleep 2
sc locks | sed 's/^/               /'
sc elections | sed 's/^/               /'

say "watching for 25 s: the lock changes hands, the master stays"
last=""
end=$((SECONDS + 25))
while [ $SECONDS -lt $end ]; do
  read -r lp lt < <(holder lock)
  read -r ep et < <(holder election)
  line="lock test: ${lp} (token ${lt})   master: ${ep} (token ${et})"
  if [ "$line" != "$last" ]; then
    info "$(clock)  $line"
    last=$line
  fi
  sleep 0.5
done

say "failover: deleting the master Pod (graceful: its side-car releases the Lease at once)"
read -r old oldtok < <(holder election)
info "master is $old (token $oldtok); kubectl delete pod $old"
t=$(now_us)
kc -n "$NS" delete pod "$old" --wait=false >/dev/null
while :; do
  read -r p tok < <(holder election)
  if [ "$p" != - ] && [ "$p" != "$old" ]; then break; fi
  if [ $(($(now_us) - t)) -gt 60000000 ]; then die "no new master within 60 s"; fi
  sleep 0.05
done
info "new master $p (token $tok), seen in the Lease $(secs $(($(now_us) - t))) s after the delete"

say "rolling restart: kubectl rollout restart deployment/election, every handoff measured"
kc -n "$NS" rollout restart deployment/election >/dev/null
kc -n "$NS" rollout status deployment/election --timeout 120s >/dev/null 2>&1 &
rollout=$!
bg+=("$rollout")
cur=$p gap_from=0 handoffs=0 max_gap=0 t=$(now_us)
while :; do
  # Done when the rollout is complete and every old Pod is gone (not just terminating).
  done_=0
  kill -0 "$rollout" 2>/dev/null || [ "$(kc -n "$NS" get pods -l app=election --no-headers 2>/dev/null | wc -l)" != 3 ] || done_=1
  read -r p tok < <(holder election)
  n=$(now_us)
  if [ "$p" = - ]; then
    [ "$gap_from" != 0 ] || gap_from=$n
  elif [ "$p" != "$cur" ]; then
    gap=0
    [ "$gap_from" = 0 ] || gap=$((n - gap_from))
    [ $gap -le $max_gap ] || max_gap=$gap
    handoffs=$((handoffs + 1))
    if [ $gap = 0 ]; then gaptxt="never seen without a master (polled every 50 ms)"; else gaptxt="no master for $(secs $gap) s"; fi
    info "$(clock)  master $cur -> $p (token $tok), $gaptxt"
    cur=$p gap_from=0
  else
    gap_from=0
  fi
  [ $done_ = 0 ] || break
  sleep 0.05
done
wait "$rollout" || die "the rollout did not complete"
read -r p tok < <(holder election)
plural=s; [ "$handoffs" -eq 1 ] && plural=
info "rollout done in $(secs $(($(now_us) - t))) s: $handoffs handoff$plural, longest time without a master $(secs $max_gap) s; master now $p (token $tok)"

say "finished in $(clock). To explore, run DEMO_KEEP=1 make demo (it leaves everything up), then:"
info "export KUBECONFIG=$KUBECONFIG_FILE"
info "$KUBECTL -n $NS get pods,leases"
info "bin/syncctl locks -n $NS -w          # live; also: elections, describe test --kind lock -n $NS"
info "hack/stack.sh down; make cluster-down    # stops it all"
