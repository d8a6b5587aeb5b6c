#!/usr/bin/env bash
# down.sh stops the local cluster of up.sh and removes everything it created: processes (by PID:
# the kubelet, containerd and its shims, the control plane, every process in the cluster's
# cgroups), mounts, network namespaces, veths, the bridge, the Service route, the iptables rules
# of kube-proxy, the kubelet and the guard chain, the sysctls the kubelet changed, cgroups, the
# cluster directory and /var/lib/kubelet/device-plugins. It works from any state, including after
# a crash or a half-finished up.sh, and ends by listing anything left (leftovers.sh).
#
# Usage: hack/cluster/down.sh        (make cluster-down)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ "${1:-}" = -h ] || [ "${1:-}" = --help ] && { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
require_root cluster-down
take_lock

# alive PID...: succeeds when one of the processes still runs (a zombie counts as gone).
alive() {
  local p
  for p in "$@"; do
    [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && return 0
  done
  return 1
}

# stop_pids WAIT PID...: SIGTERM, then SIGKILL whatever still runs after WAIT seconds.
stop_pids() {
  local wait=$1 deadline
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + wait))
  while alive "$@" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if alive "$@"; then
    kill -KILL "$@" 2>/dev/null || true
    while alive "$@"; do sleep 0.05; done
  fi
}

stop_component() {
  local pid
  if pid=$(pid_of "$1"); then
    stop_pids "${2:-10}" "$pid"
    log "$1 (pid $pid) stopped"
  fi
  rm -f "$PIDS/$1.pid"
}

# cgroup_pids prints every process in the cluster's cgroups (the Pods' containers).
cgroup_pids() {
  local h
  while read -r h; do
    [ -d "$h/$CGROUP_PARENT" ] || continue
    find "$h/$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2>/dev/null
  done < <(cgroup_hierarchies) | sort -un
}

stop_workloads() {
  # The kubelet first, so that it restarts nothing; then every container process, found through
  # the cluster's cgroups (the runtime may be gone after a crash).
  stop_component kubelet 10
  local pids
  mapfile -t pids < <(cgroup_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    log "killed ${#pids[@]} container process(es)"
  fi
}

# shim_sockets prints the sockets containerd's shims created for this cluster's tasks: containerd
# 1.6 names them /run/containerd/s/sha256(<our socket>/<namespace>/<id>) whatever its state dir.
shim_sockets() {
  local d ns id
  for d in "$CONTAINERD_DIR"/state/io.containerd.runtime.v2.task/*/*; do
    [ -d "$d" ] || continue
    id=${d##*/} ns=${d%/*} ns=${ns##*/}
    printf '/run/containerd/s/%s\n' "$(printf '%s' "$CONTAINERD_SOCK/$ns/$id" | sha256sum | cut -d' ' -f1)"
  done
}

stop_runtime() {
  # Record the shims' sockets before anything is removed.
  mapfile -t SHIM_SOCKETS < <(shim_sockets)
  stop_component containerd 10
  local pids
  mapfile -t pids < <(our_pids containerd containerd-shim-runc-v2 runc)
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping ${#pids[@]} shim(s) and runtime process(es): ${pids[*]}"
    stop_pids 5 "${pids[@]}"
  fi
}

stop_control_plane() {
  local c
  for c in kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd registry; do stop_component "$c" 10; done
  # Whatever is left that names the cluster directory (after a crash the PID files may be gone).
  local pids
  mapfile -t pids < <(our_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping ${#pids[@]} leftover process(es) of the cluster: ${pids[*]}"
    stop_pids 5 "${pids[@]}"
  fi
}

# unmount_all unmounts every mount point under the cluster directory, deepest first.
unmount_all() {
  local real n=0 m
  real=$(readlink -f "$CLUSTER_DIR" 2>/dev/null || echo "$CLUSTER_DIR")
  # Mount points in mountinfo escape spaces as \040; none of ours has any.
  mapfile -t mounts < <(awk -v a="$CLUSTER_DIR" -v b="$real" \
    'index($5, a "/") == 1 || index($5, b "/") == 1 || $5 == a || $5 == b {print $5}' /proc/self/mountinfo |
    awk '{print length($0) " " $0}' | sort -rn | cut -d' ' -f2-)
  for m in "${mounts[@]}"; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
    n=$((n + 1))
  done
  log "unmounted $n mount(s) (overlay root filesystems, shm, network namespaces, volumes)"
}

remove_network() {
  local v n=0
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    for v in $(ip -o link show master "$BRIDGE" | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$v" 2>/dev/null && n=$((n + 1))
    done
    ip link del "$BRIDGE"
    log "removed bridge $BRIDGE and $n veth(s)"
  fi
  if ip -4 route show table local type local "$SERVICE_CIDR" | grep -q .; then
    ip route del local "$SERVICE_CIDR" dev lo table local
    log "removed the local route of $SERVICE_CIDR"
  fi
}

# remove_iptables removes kube-proxy's rules (kube-proxy --cleanup), the kubelet's canary chains
# and the guard chain, for IPv4 and IPv6.
remove_iptables() {
  local proxy
  proxy=$(bin kube-proxy)
  if [ -x "$proxy" ]; then
    "$proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # Then any KUBE-* chain that is left (kube-proxy's KUBE-FIREWALL, the kubelet's canaries): the
  # rules of built-in chains that jump to one are deleted, then the chains themselves.
  local cmd table rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    for table in raw mangle nat filter; do
      "$cmd-save" -t "$table" 2>/dev/null | grep -q '^:KUBE-' || continue
      while read -r rule; do
        # shellcheck disable=SC2086
        eval "$cmd -w 5 -t $table -D ${rule#-A }" || true
      done < <("$cmd-save" -t "$table" | grep -E '^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j KUBE-')
      mapfile -t chains < <("$cmd-save" -t "$table" | awk '/^:KUBE-/ {print substr($1, 2)}')
      for chain in "${chains[@]}"; do $cmd -w 5 -t "$table" -F "$chain"; done
      for chain in "${chains[@]}"; do $cmd -w 5 -t "$table" -X "$chain"; done
    done
  done
  while ipt -t mangle -D POSTROUTING -j "$GUARD_CHAIN" 2>/dev/null; do :; done
  if ipt -t mangle -S "$GUARD_CHAIN" >/dev/null 2>&1; then
    local dropped
    dropped=$(ipt -t mangle -L "$GUARD_CHAIN" -n -v -x | awk '$3 == "DROP" {s += $1} END {print s + 0}')
    log "guard chain: $dropped packet(s) of the cluster's ranges were stopped from leaving"
    ipt -t mangle -F "$GUARD_CHAIN"
    ipt -t mangle -X "$GUARD_CHAIN"
  fi
  log "iptables rules of kube-proxy, the kubelet and the guard removed"
}

restore_sysctls() {
  [ -f "$SAVED_SYSCTLS" ] || return 0
  local kv
  while read -r kv; do sysctl -qw "$kv" || log "cannot restore $kv"; done <"$SAVED_SYSCTLS"
  log "restored $(wc -l <"$SAVED_SYSCTLS") sysctl(s) the kubelet changed"
}

remove_cgroups() {
  local h n=0 deadline=$((SECONDS + 10)) left
  while read -r h; do
    [ -d "$h/$CGROUP_PARENT" ] || continue
    # Deepest first; a cgroup whose last process is still exiting is retried.
    while :; do
      left=0
      while read -r d; do
        rmdir "$d" 2>/dev/null && n=$((n + 1)) || left=1
      done < <(find "$h/$CGROUP_PARENT" -depth -type d)
      [ $left = 0 ] || [ $SECONDS -ge $deadline ] && break
      sleep 0.1
    done
  done < <(cgroup_hierarchies)
  log "removed $n cgroup(s) under /$CGROUP_PARENT"
}

remove_state() {
  local s n=0
  for s in "${SHIM_SOCKETS[@]}"; do [ -e "$s" ] && rm -f "$s" && n=$((n + 1)); done
  [ $n = 0 ] || log "removed $n stale shim socket(s)"
  rm -rf "$CLUSTER_DIR" "$DEVICE_PLUGINS_DIR"
  rmdir /var/lib/kubelet 2>/dev/null || true
  # The kubelet links every container's log into /var/log/containers, whatever its settings.
  for f in /var/log/containers/*; do
    [ -L "$f" ] && [[ $(readlink "$f") == "$CLUSTER_DIR/"* ]] && rm -f "$f"
  done
  rmdir /var/log/containers 2>/dev/null || true
  # Where kubelets without --volume-plugin-dir create their FlexVolume directory (empty).
  rmdir -p /usr/libexec/kubernetes/kubelet-plugins/volume/exec 2>/dev/null || true
  # containerd 1.6 puts shim sockets in /run/containerd/s whatever its state directory.
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  # containerd's CNI library caches each sandbox's results (bridge and loopback) in
  # /var/lib/cni/results; ours name the network or a namespace under the cluster directory.
  local f
  for f in /var/lib/cni/results/*; do
    [ -f "$f" ] || continue
    if [[ ${f##*/} == "$CNI_NETWORK"-* ]] || grep -qF "$CLUSTER_DIR/" "$f"; then rm -f "$f"; fi
  done
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

SHIM_SOCKETS=()
# hack/stack.sh runs cert-manager's controllers as a host process against this cluster; a crashed
# make demo or e2e run may have left it (its PID file lives in the cluster directory).
stop_stack() {
  local f=$CLUSTER_DIR/stack/cert-manager.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *cert-manager-controllers*"$CLUSTER_DIR"* ]]; then
    stop_pids 30 "$pid"
    log "cert-manager controllers of hack/stack.sh (pid $pid) stopped"
  fi
  rm -f "$f"
}

stop_stack
step "stopping the kubelet and every container" stop_workloads
step "stopping containerd and its shims" stop_runtime
step "stopping kube-proxy and the control plane" stop_control_plane
step "unmounting" unmount_all
step "removing veths, the bridge and the Service route" remove_network
step "removing iptables rules" remove_iptables
step "restoring sysctls" restore_sysctls
step "removing cgroups" remove_cgroups
step "removing $CLUSTER_DIR and $DEVICE_PLUGINS_DIR" remove_state
"$CLUSTER_ROOT/hack/cluster/leftovers.sh"
log "cluster down in $(_clock)s"
