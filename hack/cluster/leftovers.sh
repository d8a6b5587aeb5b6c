#!/usr/bin/env bash
# leftovers.sh lists whatever the local cluster left on this machine: processes, container
# processes, mounts, network namespaces, veths, the bridge, routes of its ranges, iptables chains,
# cgroups, state directories. It prints nothing and exits 0 when the machine is clean, and exits 1
# after listing what it found otherwise. down.sh runs it last; cycle.sh after every cycle.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root cluster-down

found=0
report() {
  local what=$1 lines=$2
  [ -n "$lines" ] || return 0
  found=1
  log "left behind: $what:"
  printf '%s\n' "$lines" | sed 's/^/    /' >&2
}

procs=""
for p in $(our_pids ""); do procs+="$p $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-150)"$'\n'; done
report "processes" "${procs%$'\n'}"

cg="" cgprocs=""
while read -r h; do
  [ -d "$h/$CGROUP_PARENT" ] || continue
  cg+="$h/$CGROUP_PARENT"$'\n'
  cgprocs+=$(find "$h/$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
done < <(cgroup_hierarchies)
report "processes in the cluster's cgroups" "$(printf '%s' "$cgprocs" | sort -un)"
report "cgroups" "${cg%$'\n'}"

real=$(readlink -f "$CLUSTER_DIR" 2>/dev/null || echo "$CLUSTER_DIR")
report "mounts" "$(awk -v a="$CLUSTER_DIR" -v b="$real" 'index($5, a) == 1 || index($5, b) == 1 {print $5}' /proc/self/mountinfo)"
# containerd keeps the network namespaces under its state directory (netns_mounts_under_state_dir);
# CNI namespaces elsewhere would be another runtime's, but are listed all the same.
netns=""
for f in /var/run/netns/cni-*; do [ -e "$f" ] && netns+="$f"$'\n'; done
report "network namespaces" "${netns%$'\n'}"
report "bridge" "$(ip -o link show "$BRIDGE" 2>/dev/null || true)"
# The bridge CNI plugin names host-side veths veth<8 hex digits>.
report "veths" "$(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^veth[0-9a-f]{8}(@|$)' || true)"
routes=""
for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
  routes+=$(ip -4 -o route show table all root "$cidr" 2>/dev/null || true)$'\n'
done
report "routes" "$(printf '%s' "$routes" | sed '/^$/d')"
chains=""
for cmd in iptables ip6tables; do
  command -v "$cmd-save" >/dev/null || continue
  chains+=$("$cmd-save" 2>/dev/null | awk -v c="$cmd" -v g="$GUARD_CHAIN" \
    '/^\*/ {t = substr($1, 2)} /^:/ {n = substr($1, 2); if (n ~ /^KUBE-/ || n == g) print c " -t " t " " n}')$'\n'
done
report "iptables chains" "$(printf '%s' "$chains" | sed '/^$/d')"
state=""
for d in "$CLUSTER_DIR" "$DEVICE_PLUGINS_DIR"; do [ -e "$d" ] && state+="$d"$'\n'; done
for f in /var/lib/cni/results/*; do
  [ -f "$f" ] || continue
  if [[ ${f##*/} == "$CNI_NETWORK"-* ]] || grep -qF "$CLUSTER_DIR/" "$f"; then state+="$f"$'\n'; fi
done
report "state" "${state%$'\n'}"

logs=""
for f in /var/log/containers/*; do
  [ -L "$f" ] && [[ $(readlink "$f") == "$CLUSTER_DIR/"* ]] && logs+="$f"$'\n'
done
report "container log links" "${logs%$'\n'}"

if [ $found = 1 ]; then
  log "the machine is not clean; hack/cluster/down.sh removes these"
  exit 1
fi
log "nothing of the cluster is left on this machine"
