#!/usr/bin/env bash
# stack.sh installs the product on the running local cluster (hack/cluster/up.sh), the way a user
# does: cert-manager's CRDs and its real controllers and cainjector (hack/cert-manager.sh's binary,
# run as a host process against the cluster's API server; cluster resource namespace
# "cert-manager"), then the chart in its normal Service mode, in namespace metaparticle-sync.
# By default it runs `helm install --wait` of charts/metaparticle-sync with default values (the
# chart's default images are the ones images.sh imported): make demo (hack/demo.sh) uses that.
# With --from-registry it follows docs/install.md instead (hack/install-doc.sh, phases install,
# check and upgrade): images and chart pushed to the cluster's registry, `helm install` from oci://, and
# containerd pulling the images; the product e2e tests (e2e/product) run on that install. `down`
# undoes either. Root is required (the cluster's kubeconfig is root's).
#
# Usage: hack/stack.sh up [--from-registry] [--bind NAMESPACE[:SERVICEACCOUNT]]...
#            --bind adds a RoleBinding (chart value sidecar.rbac.bindings) that lets the service
#            account (default "default") of NAMESPACE use Leases (not with --from-registry).
#        hack/stack.sh down     uninstall (docs/install.md's uninstall phase after
#                               --from-registry), stop the cert-manager controllers (idempotent)
#        hack/stack.sh status   exit 0 when the stack is installed and cert-manager runs
#
# Environment: STACK_RELEASE (default metaparticle-sync), STACK_NAMESPACE (default
# metaparticle-sync), STACK_HELM_TIMEOUT (default 3m); docs/install.md uses the defaults.
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"

RELEASE=${STACK_RELEASE:-metaparticle-sync}
NAMESPACE=${STACK_NAMESPACE:-metaparticle-sync}
STACK_DIR=$CLUSTER_DIR/stack
CM_PID=$STACK_DIR/cert-manager.pid
CM_LOG=$STACK_DIR/cert-manager.log
# Present while the stack was installed by following docs/install.md.
FROM_REGISTRY=$STACK_DIR/from-registry

log() { printf '[stack %6ss] %s\n' "$(_clock)" "$*" >&2; }

require_root stack
[ -f "$ENV_FILE" ] || die "the local cluster is not running (no $ENV_FILE): run hack/cluster/up.sh first"
KUBECTL=$(bin kubectl)
HELM=$(bin helm)
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
helm_() { "$HELM" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

cm_pid() {
  local pid
  [ -f "$CM_PID" ] || return 1
  pid=$(cat "$CM_PID")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *cert-manager-controllers*"$KUBECONFIG_FILE"* ]] || return 1
  echo "$pid"
}

cert_manager_up() {
  local crds bin pid
  mkdir -p "$STACK_DIR"
  # Builds the binary once (cached); quiet unless it fails.
  "$CLUSTER_ROOT/hack/cert-manager.sh" 2>"$STACK_DIR/cert-manager-build.log" ||
    { cat "$STACK_DIR/cert-manager-build.log" >&2; die "hack/cert-manager.sh failed"; }
  bin=$("$CLUSTER_ROOT/hack/cert-manager.sh" --print-bin)
  crds=$("$CLUSTER_ROOT/hack/cert-manager.sh" --print-crds 2>/dev/null)
  kc apply --server-side --force-conflicts -f "$crds" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$crds" >/dev/null
  # Discovery lags Established; helm maps the chart's Issuer and Certificate through it.
  local i=0 resources=
  until [[ $resources == *'"name":"issuers"'* && $resources == *'"name":"certificates"'* ]]; do
    resources=$(kc get --raw /apis/cert-manager.io/v1 2>/dev/null) || true
    i=$((i + 1))
    [ $i -lt 300 ] || die "discovery does not serve cert-manager.io/v1 issuers and certificates"
    sleep 0.2
  done
  kc create namespace cert-manager --dry-run=client -o yaml | kc apply -f - >/dev/null
  if pid=$(cm_pid); then
    log "cert-manager controllers already running (pid $pid)"
    return 0
  fi
  setsid "$bin" -kubeconfig "$KUBECONFIG_FILE" -cluster-resource-namespace cert-manager \
    >>"$CM_LOG" 2>&1 </dev/null 9>&- &
  echo $! >"$CM_PID"
  sleep 1
  cm_pid >/dev/null || { tail -n 30 "$CM_LOG" >&2; die "cert-manager controllers exited"; }
  log "cert-manager controllers and cainjector: pid $!, log $CM_LOG"
}

helm_install() {
  local args=() i=0 b ns sa
  for b in "$@"; do
    ns=${b%%:*}
    sa=default
    [[ $b == *:* ]] && sa=${b#*:}
    kc create namespace "$ns" --dry-run=client -o yaml | kc apply -f - >/dev/null
    args+=(--set "sidecar.rbac.bindings[$i].namespace=$ns" --set "sidecar.rbac.bindings[$i].serviceAccount=$sa")
    i=$((i + 1))
  done
  helm_ upgrade --install "$RELEASE" "$CLUSTER_ROOT/charts/metaparticle-sync" \
    --namespace "$NAMESPACE" --create-namespace --wait --timeout "${STACK_HELM_TIMEOUT:-3m}" \
    "${args[@]}" >/dev/null || {
    log "helm install failed; what runs in $NAMESPACE:"
    kc -n "$NAMESPACE" get pods,certificates,events >&2 || true
    tail -n 20 "$CM_LOG" >&2 || true
    return 1
  }
  kc -n "$NAMESPACE" get pods -o wide | sed 's/^/    /' >&2
}

# install_doc PHASE... runs those phases of docs/install.md with what its reader sets: REGISTRY
# (the cluster's registry), kubectl and helm on PATH, and SSL_CERT_FILE holding the system's roots
# and the cluster's CA, which signed the registry's certificate.
install_doc() {
  local bundle=$STACK_DIR/ca-bundle.crt
  mkdir -p "$STACK_DIR"
  cat /etc/ssl/certs/ca-certificates.crt "$PKI/ca.crt" >"$bundle" 2>/dev/null || cp "$PKI/ca.crt" "$bundle"
  REGISTRY=$REGISTRY_HOST/metaparticle KUBECONFIG=$KUBECONFIG_FILE SSL_CERT_FILE=$bundle \
    PATH=$(dirname "$KUBECTL"):$(dirname "$HELM"):$PATH "$CLUSTER_ROOT/hack/install-doc.sh" "$@"
}

stack_up() {
  local binds=() from_registry=0
  while [ $# -gt 0 ]; do
    case $1 in
      --bind) binds+=("$2"); shift 2 ;;
      --from-registry) from_registry=1; shift ;;
      *) die "unknown argument $1" ;;
    esac
  done
  [ $from_registry = 0 ] || [ ${#binds[@]} = 0 ] || die "--bind does not go with --from-registry (docs/install.md binds its own namespace)"
  [ $from_registry = 0 ] || [ "$RELEASE/$NAMESPACE" = metaparticle-sync/metaparticle-sync ] ||
    die "--from-registry follows docs/install.md, which names release and namespace metaparticle-sync"
  log "installing on $API_SERVER (kubeconfig $KUBECONFIG_FILE)"
  step "cert-manager: CRDs and controllers (host process)" cert_manager_up
  if [ $from_registry = 1 ]; then
    touch "$FROM_REGISTRY"
    step "docs/install.md, word for word (registry https://$REGISTRY_HOST)" install_doc install check upgrade
  else
    step "helm install $RELEASE (namespace $NAMESPACE, default values, --wait)" helm_install "${binds[@]}"
  fi
}

stack_down() {
  local pid i
  if [ -f "$FROM_REGISTRY" ] && helm_ status "$RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1; then
    # A failed install leaves a half release: carry on with helm uninstall and cert-manager.
    step "docs/install.md's uninstall" install_doc uninstall || log "docs/install.md's uninstall failed; going on"
  fi
  rm -f "$FROM_REGISTRY"
  if helm_ status "$RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1; then
    helm_ uninstall "$RELEASE" --namespace "$NAMESPACE" --wait --timeout 60s >/dev/null
    log "helm uninstall $RELEASE: done"
  fi
  if pid=$(cm_pid); then
    kill -TERM "$pid"
    for i in $(seq 1 150); do
      [ -r "/proc/$pid/cmdline" ] || break
      sleep 0.2
    done
    if [ -r "/proc/$pid/cmdline" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      log "cert-manager controllers (pid $pid): killed after 30s"
    else
      log "cert-manager controllers (pid $pid): stopped"
    fi
  fi
  rm -f "$CM_PID"
}

case ${1:-} in
  up) shift; stack_up "$@" ;;
  down) stack_down ;;
  status) cm_pid >/dev/null && helm_ status "$RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1 ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "usage: $0 up [--from-registry] [--bind NS[:SA]]... | down | status" ;;
esac
