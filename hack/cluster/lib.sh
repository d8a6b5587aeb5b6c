# shellcheck shell=bash disable=SC2034
# lib.sh: settings and helpers shared by the local-cluster scripts (up.sh, down.sh, images.sh,
# leftovers.sh). Source it; it defines no side effects beyond variables and functions.
#
# Every address below exists only on this machine. The Pod range is the /24 of a bridge that no
# physical interface joins; the Service range is routed to the local stack ("local" route on lo)
# before any component starts, so a ClusterIP that kube-proxy does not (yet) translate is answered
# by this machine's own stack and never follows the default route. Override the ranges only with
# ranges that no route on the machine covers (up.sh checks).

CLUSTER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${METAPARTICLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaparticle-sync}

# Everything the cluster writes at run time lives here; cluster-down removes it.
CLUSTER_DIR=${METAPARTICLE_CLUSTER_DIR:-/var/run/metaparticle-sync}
# Tools and the pause binary are built here (kept across clusters; Go skips up-to-date builds).
TOOLS_DIR=$CACHE/cluster/bin
# Image tarballs (kept across clusters; rebuilt when their binary changes).
IMAGES_DIR=$CACHE/cluster/images

NODE_NAME=${METAPARTICLE_NODE_NAME:-metaparticle-sync-node}
BRIDGE=${METAPARTICLE_BRIDGE:-mpsync0}
POD_CIDR=${METAPARTICLE_POD_CIDR:-10.217.0.0/24}
NODE_IP=${METAPARTICLE_NODE_IP:-10.217.0.1}
SERVICE_CIDR=${METAPARTICLE_SERVICE_CIDR:-10.217.1.0/24}
API_SERVICE_IP=${METAPARTICLE_API_SERVICE_IP:-10.217.1.1}
# No DNS server runs. Pods get this unused ClusterIP as their resolver: it is routed locally and
# refuses every query, so nothing asks the host's resolvers.
DNS_IP=${METAPARTICLE_DNS_IP:-10.217.1.10}
POD_RANGE_START=${POD_CIDR%.*}.10
POD_RANGE_END=${POD_CIDR%.*}.250
API_PORT=6443
API_SERVER=https://$NODE_IP:$API_PORT
# Fixed ports below the ephemeral range, so that envtest's random ports never collide.
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
# The cluster's image registry (CNCF Distribution) serves TLS on loopback; containerd pulls
# from it and make push / make chart push to it (REGISTRY=$REGISTRY_HOST/metaparticle).
REGISTRY_PORT=12500
REGISTRY_HOST=127.0.0.1:$REGISTRY_PORT
# The kubelet's, kube-proxy's and the controllers' cgroups all live below this cgroup.
CGROUP_PARENT=metaparticle-sync
# iptables chain (mangle POSTROUTING) that drops any packet of the cluster's ranges about to leave
# through an interface other than the bridge or lo.
GUARD_CHAIN=MPSYNC-GUARD

PKI=$CLUSTER_DIR/pki
PIDS=$CLUSTER_DIR/pids
LOGS=$CLUSTER_DIR/logs
CONTAINERD_DIR=$CLUSTER_DIR/containerd
CONTAINERD_SOCK=$CONTAINERD_DIR/containerd.sock
REGISTRY_DIR=$CLUSTER_DIR/registry
RUNC_ROOT=$CLUSTER_DIR/runc
CNI_CONF_DIR=$CLUSTER_DIR/cni/net.d
CNI_IPAM_DIR=$CLUSTER_DIR/cni/ipam
CNI_NETWORK=metaparticle-sync
CNI_BIN_DIR=/usr/lib/cni
KUBELET_DIR=$CLUSTER_DIR/kubelet
KUBECONFIG_FILE=$CLUSTER_DIR/kubeconfig
# The known file later tools read: shell assignments describing the running cluster.
ENV_FILE=$CLUSTER_DIR/cluster.env
SAVED_SYSCTLS=$CLUSTER_DIR/saved-sysctls
# The kubelet writes device-plugin sockets here whatever its root directory is.
DEVICE_PLUGINS_DIR=/var/lib/kubelet/device-plugins
LOCK_FILE=/var/lock/metaparticle-sync-cluster.lock

# The sysctls the kubelet changes when protectKernelDefaults is false; up.sh saves and down.sh
# restores them.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# Components in start order; down.sh stops them in reverse.
COMPONENTS=(containerd registry etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)

export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

_t0=${EPOCHREALTIME/./}
_clock() {
  local now=${EPOCHREALTIME/./}
  printf '%d.%01d' $(((now - _t0) / 1000000)) $((((now - _t0) / 100000) % 10))
}
log() { printf '[cluster %6ss] %s\n' "$(_clock)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# step DESCRIPTION CMD...: runs CMD and prints how long it took.
step() {
  local desc=$1
  shift
  local start=${EPOCHREALTIME/./}
  log "$desc ..."
  "$@"
  local d=$((${EPOCHREALTIME/./} - start))
  log "$desc: done in $((d / 1000000)).$(((d / 10000) % 100 / 10))$(((d / 10000) % 10))s"
}

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: the local cluster needs root (it runs containerd and the kubelet, creates a bridge," >&2
    echo "iptables rules, network namespaces and cgroups). Run it as root, e.g. sudo make $1." >&2
    exit 1
  fi
}

# take_lock serializes cluster-up, cluster-down and cluster-test across processes. A caller that
# holds the lock exports METAPARTICLE_CLUSTER_LOCKED=1 so that the scripts it runs do not wait for
# it.
take_lock() {
  [ "${METAPARTICLE_CLUSTER_LOCKED:-}" = 1 ] && return 0
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  if ! flock -n 9; then
    log "another cluster-up/down/test holds $LOCK_FILE; waiting for it"
    flock 9
  fi
  export METAPARTICLE_CLUSTER_LOCKED=1
}

bin() { "$CLUSTER_ROOT/hack/control-plane.sh" --print-bin "$1"; }

# pid_of NAME prints the PID of a component started by up.sh when that process is alive and is
# still ours (its command line names the cluster directory), and fails otherwise.
pid_of() {
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$CLUSTER_DIR"* ]] || return 1
  echo "$pid"
}

# OUR_EXES are the executables the cluster runs outside containers.
OUR_EXES=" registry etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet containerd containerd-shim-runc-v2 runc "

# our_pids [EXE...] prints every process that is one of OUR_EXES (or of EXE...) and whose command
# line names the cluster directory: the components, containerd's shims (their -address is our
# socket), whatever a crash left behind. Processes in the cluster's containers are found through
# its cgroups instead.
our_pids() {
  local d p exe exes=$OUR_EXES
  [ -z "$*" ] || exes=" $* "
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    exe=$(readlink "$d/exe" 2>/dev/null) || continue
    exe=${exe% (deleted)}
    [[ $exes == *" ${exe##*/} "* ]] || continue
    [[ $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) == *"$CLUSTER_DIR"* ]] && echo "$p"
  done
  return 0
}

# all_running fails, showing the end of their logs, when a component of the cluster is not running.
all_running() {
  local c dead=()
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || dead+=("$c"); done
  [ ${#dead[@]} -eq 0 ] && return 0
  for c in "${dead[@]}"; do
    log "$c is not running; last lines of $LOGS/$c.log:"
    tail -n 20 "$LOGS/$c.log" >&2 || true
  done
  die "not running: ${dead[*]}"
}

# cgroup_hierarchies prints the mount point of every cgroup hierarchy (v1 and the v2 one).
cgroup_hierarchies() {
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { t = $(i + 1); break }
         if (t == "cgroup" || t == "cgroup2") print $5 }' /proc/self/mountinfo
}

# ipt runs iptables, waiting for the xtables lock.
ipt() { iptables -w 5 "$@"; }
