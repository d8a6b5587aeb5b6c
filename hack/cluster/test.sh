#!/usr/bin/env bash
# test.sh (make cluster-test) brings the local cluster up, runs the Go tests under ./e2e/ against
# it (METAPARTICLE_CLUSTER_ENV points them at the cluster) and brings it down again, which fails
# if anything is left behind. A cluster that was already running is reused and left running.
# On failure the cluster's logs are copied to /tmp/metaparticle-sync-cluster-logs.<time> first.
#
# Environment: CLUSTER_TEST_PACKAGES (default ./e2e/...), GO_TEST_FLAGS (default -v),
# KEEP_CLUSTER=1 (leave the cluster up afterwards); the chaos run in e2e/product reads
# CHAOS_GRANTS and CHAOS_FAULTS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root cluster-test
take_lock

was_up=0
if [ -f "$ENV_FILE" ] && pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null; then
  was_up=1
  log "reusing the running cluster (it stays up afterwards)"
fi

finish() {
  local rc=$?
  if [ $rc != 0 ] && [ -d "$LOGS" ]; then
    local keep
    keep=/tmp/metaparticle-sync-cluster-logs.$(date +%Y%m%d-%H%M%S)
    cp -r "$LOGS" "$keep"
    log "tests failed; the cluster's logs are in $keep"
  fi
  if [ $was_up = 0 ] && [ "${KEEP_CLUSTER:-}" != 1 ]; then
    "$CLUSTER_ROOT/hack/cluster/down.sh" || rc=1
  fi
  exit $rc
}
trap finish EXIT

"$CLUSTER_ROOT/hack/cluster/up.sh" >/dev/null
cd "$CLUSTER_ROOT"
# -p 1: one package at a time, as the chaos run (e2e/product) restarts the API server.
# shellcheck disable=SC2086
# -timeout: a long chaos run (CHAOS_GRANTS=20000) takes most of an hour.
# GO_TEST_FLAGS defaults to -v: the tests' measurements (handoffs, the chaos run's counts) are
# their product.
METAPARTICLE_CLUSTER_ENV=$ENV_FILE go test -count=1 -p 1 -timeout 150m ${GO_TEST_FLAGS--v} ${CLUSTER_TEST_PACKAGES:-./e2e/...}
# Every component survived the tests.
all_running
