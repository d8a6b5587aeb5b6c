#!/usr/bin/env bash
# up.sh starts a real single-node Kubernetes cluster on this machine, built from source: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables) and a kubelet
# on containerd + runc, with a CNI bridge that no physical interface joins, and an image registry
# (CNCF Distribution) on https://127.0.0.1:12500 that containerd pulls from. Root is required.
#
# It is idempotent: components already running are kept, missing ones are started. Each step is
# printed with its time on stderr; the last line on stdout is the kubeconfig path, which is also
# recorded (with the cluster's addresses) in $METAPARTICLE_CLUSTER_DIR/cluster.env.
#
# Usage: hack/cluster/up.sh            (make cluster-up)
#        hack/cluster/up.sh --print-kubeconfig
#        hack/cluster/up.sh --restart kube-apiserver|etcd   (crash and restart one component of a
#                             running cluster: SIGKILL, then started as up.sh starts it, until ready)
#        hack/cluster/down.sh removes everything again (make cluster-down).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RESTART=
case ${1:-} in
  --print-kubeconfig) echo "$KUBECONFIG_FILE"; exit 0 ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --restart)
    RESTART=${2:-}
    case $RESTART in
      kube-apiserver | etcd) ;;
      *) die "--restart: want kube-apiserver or etcd, got '${RESTART}'" ;;
    esac
    ;;
  "") ;;
  *) die "unknown argument $1" ;;
esac

require_root cluster-up
take_lock
umask 022

PAUSE_REF=docker.io/metaparticle/sync-pause:1.0
PREFIX_LEN=${POD_CIDR#*/}

ensure_packages() {
  local need=()
  command -v containerd >/dev/null && command -v ctr >/dev/null &&
    command -v containerd-shim-runc-v2 >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  for p in bridge host-local loopback; do
    [ -x "$CNI_BIN_DIR/$p" ] || { need+=(containernetworking-plugins); break; }
  done
  command -v iptables >/dev/null || need+=(iptables)
  command -v curl >/dev/null || need+=(curl)
  command -v ip >/dev/null || need+=(iproute2)
  command -v nsenter >/dev/null && command -v flock >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -eq 0 ]; then
    log "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1 {print $3}'), CNI plugins and iptables are installed"
    return 0
  fi
  log "installing with apt-get: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

build_tools() {
  mkdir -p "$TOOLS_DIR"
  (cd "$CLUSTER_ROOT" && CGO_ENABLED=0 go build -trimpath -o "$TOOLS_DIR/" ./hack/tools/mkpki ./hack/tools/mkimage)
}

# ranges_are_free fails when a route or an address of this machine already covers or lies inside
# the Pod or Service range: choosing those would send cluster traffic somewhere else.
ranges_are_free() {
  local cidr line bad=0
  for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
    while read -r line; do
      [ -z "$line" ] && continue
      case $line in default* | "unreachable default"*) continue ;; esac
      log "route conflicts with $cidr: $line"
      bad=1
    done < <(ip -4 -o route show table all root "$cidr" 2>/dev/null; ip -4 -o route show table all match "$cidr" 2>/dev/null)
    while read -r line; do
      log "address conflicts with $cidr: $line"
      bad=1
    done < <(ip -4 -o addr show to "$cidr" 2>/dev/null)
  done
  [ $bad = 0 ] || die "choose other ranges (METAPARTICLE_POD_CIDR, METAPARTICLE_SERVICE_CIDR, ...)"
}

save_sysctls() {
  [ -f "$SAVED_SYSCTLS" ] && return 0
  local k
  for k in "${KUBELET_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$SAVED_SYSCTLS.tmp"
  mv "$SAVED_SYSCTLS.tmp" "$SAVED_SYSCTLS"
}

# setup_network creates the bridge with the node IP and routes the Service range to the local
# stack, before anything can send to either range; then it installs the guard chain.
setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ranges_are_free
    ip link add "$BRIDGE" type bridge
  fi
  # The bridge only joins Pod veths: IPv6 is off on it so that nothing but IPv4 is ever routed.
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" 2>/dev/null || true
  ip -4 -o addr show dev "$BRIDGE" | grep -qF " $NODE_IP/$PREFIX_LEN " ||
    ip addr add "$NODE_IP/$PREFIX_LEN" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # ClusterIPs are answered by this machine's stack unless kube-proxy translates them: a
  # connection to an unused one is refused here. src: replies and DNATed packets use the node IP.
  ip route replace local "$SERVICE_CIDR" dev lo src "$NODE_IP" table local
  # Forwarding on the bridge only (Pod → ClusterIP → Pod); the global switch stays as it was, so
  # no other interface forwards anything.
  sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"

  # Guard: in mangle POSTROUTING (after routing and DNAT, before any NAT), drop every packet of
  # the cluster's ranges that is about to leave through anything but the bridge or lo.
  ipt -t mangle -N "$GUARD_CHAIN" 2>/dev/null || true
  ipt -t mangle -F "$GUARD_CHAIN"
  ipt -t mangle -A "$GUARD_CHAIN" -o lo -j RETURN
  ipt -t mangle -A "$GUARD_CHAIN" -o "$BRIDGE" -j RETURN
  local m
  for m in "-s $POD_CIDR" "-d $POD_CIDR" "-d $SERVICE_CIDR" \
    "-m conntrack --ctorigsrc $POD_CIDR" "-m conntrack --ctorigdst $SERVICE_CIDR"; do
    # shellcheck disable=SC2086
    ipt -t mangle -A "$GUARD_CHAIN" $m -m comment --comment "metaparticle-sync: stays on this machine" -j DROP
  done
  ipt -t mangle -C POSTROUTING -j "$GUARD_CHAIN" 2>/dev/null ||
    ipt -t mangle -I POSTROUTING 1 -j "$GUARD_CHAIN"
}

ensure_cgroups() {
  local h
  while read -r h; do
    [ -d "$h/$CGROUP_PARENT" ] && continue
    mkdir "$h/$CGROUP_PARENT"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$CGROUP_PARENT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$CGROUP_PARENT/cpuset.mems"
    fi
  done < <(cgroup_hierarchies)
}

write_configs() {
  mkdir -p "$CONTAINERD_DIR" "$RUNC_ROOT" "$CNI_CONF_DIR" "$CNI_IPAM_DIR" "$KUBELET_DIR" \
    "$CLUSTER_DIR/pod-logs" "$CLUSTER_DIR/kube-proxy" "$PIDS" "$LOGS"
  ln -sfn "$PKI/admin.kubeconfig" "$KUBECONFIG_FILE"

  cat >"$CONTAINERD_DIR/config.toml" <<EOF
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  disable_apparmor = true
  # This machine lacks CAP_SYS_RESOURCE: without this, runc's write to oom_score_adj is denied
  # and it fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$RUNC_ROOT"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONTAINERD_DIR/certs.d"
EOF

  # containerd trusts the cluster's CA for the loopback registry, and for it only.
  mkdir -p "$CONTAINERD_DIR/certs.d/$REGISTRY_HOST"
  cat >"$CONTAINERD_DIR/certs.d/$REGISTRY_HOST/hosts.toml" <<EOF
server = "https://$REGISTRY_HOST"

[host."https://$REGISTRY_HOST"]
  capabilities = ["pull", "resolve"]
  ca = "$PKI/ca.crt"
EOF

  mkdir -p "$REGISTRY_DIR/data"
  cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_HOST
  secret: metaparticle-sync-local-registry
  tls:
    certificate: $PKI/registry-serving.crt
    key: $PKI/registry-serving.key
EOF

  # Pods get an address on the bridge and a route to the Service range only: no default route,
  # so a Pod cannot even try to reach anything outside the machine. No masquerade, and
  # isGateway false keeps the plugin from switching on global IP forwarding.
  cat >"$CNI_CONF_DIR/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "$POD_RANGE_START", "rangeEnd": "$POD_RANGE_END", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EOF

  cat >"$KUBELET_DIR/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS:
  - $DNS_IP
resolvConf: ""
podLogsDir: $CLUSTER_DIR/pod-logs
staticPodPath: ""
rotateCertificates: false
serverTLSBootstrap: false
# Never garbage-collect or evict the locally imported images: they cannot be pulled again.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
EOF

  cat >"$CLUSTER_DIR/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $PKI/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses:
  - $NODE_IP/32
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 1s
# 0: leave the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

configure() {
  write_configs
  ensure_cgroups
}

# start NAME CMD...: starts CMD in its own session, logging to $LOGS/NAME.log, unless NAME runs.
start() {
  local name=$1 pid
  shift
  if pid=$(pid_of "$name"); then
    log "$name: already running (pid $pid)"
    return 0
  fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name.pid"
  log "$name: started (pid $!, log $LOGS/$name.log)"
}

# wait_for NAME DESCRIPTION CMD...: polls CMD until it succeeds; fails with NAME's log when NAME
# dies or after two minutes.
wait_for() {
  local name=$1 desc=$2 deadline=$((SECONDS + 120))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "$name" >/dev/null; then
      log "$name exited; last lines of $LOGS/$name.log:"
      tail -n 40 "$LOGS/$name.log" >&2
      die "$name is not running"
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $desc; last lines of $LOGS/$name.log:"
      tail -n 40 "$LOGS/$name.log" >&2
      die "$desc"
    fi
    sleep 0.2
  done
}

KUBECTL=$(bin kubectl)
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" "$@"; }
healthz() { curl -fsS --max-time 2 -k "$1"; }

start_containerd() {
  # A running containerd keeps the configuration it started with: refuse to go on with an older
  # one (a cluster started before up.sh changed it) rather than fail later in a pull.
  local sum
  sum=$(sha256sum "$CONTAINERD_DIR/config.toml" | cut -d' ' -f1)
  if pid_of containerd >/dev/null && [ "$(cat "$PIDS/containerd.config-sha256" 2>/dev/null)" != "$sum" ]; then
    die "containerd runs with another configuration than $CONTAINERD_DIR/config.toml: make cluster-down, then make cluster-up"
  fi
  echo "$sum" >"$PIDS/containerd.config-sha256"
  # Image pulls go to a proxy address that refuses them: a missing image fails here instead of
  # reaching a registry. The cluster's own registry, on loopback, is never proxied.
  start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$CONTAINERD_DIR/config.toml"
  wait_for containerd "containerd to serve" ctr_ version
}

start_registry() {
  start registry "$(bin registry)" serve "$REGISTRY_DIR/config.yml"
  wait_for registry "the registry to serve" curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "https://$REGISTRY_HOST/v2/"
}

import_images() {
  "$CLUSTER_ROOT/hack/cluster/images.sh" --import --pause >/dev/null
  ctr_ -n k8s.io images ls -q | grep -vF sha256: | sed 's/^/    /' >&2
}

start_etcd() {
  start etcd "$(bin etcd)" --name default --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd "etcd to be healthy" healthz "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_apiserver() {
  start kube-apiserver "$(bin kube-apiserver)" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address "$NODE_IP" --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
    --cert-dir "$CLUSTER_DIR/kube-apiserver" \
    --tls-cert-file "$PKI/apiserver-serving.crt" --tls-private-key-file "$PKI/apiserver-serving.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,ServiceAccount,PodSecurity \
    --kubelet-client-certificate "$PKI/apiserver-to-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-to-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false --v=1
  wait_for kube-apiserver "kube-apiserver to be ready" kc get --raw /readyz
}

# The API server's client identity towards the kubelet (logs, exec, port-forward) gets the
# kubelet API through RBAC, which the kubelet's webhook authorizer asks about.
apiserver_rbac() {
  kc create clusterrolebinding metaparticle-sync:apiserver-to-kubelet \
    --clusterrole system:kubelet-api-admin --user kube-apiserver-kubelet-client \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
}

start_controllers() {
  start kube-controller-manager "$(bin kube-controller-manager)" \
    --kubeconfig "$PKI/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$PKI/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$PKI/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --cert-dir "$CLUSTER_DIR/kube-controller-manager" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-name metaparticle-sync --leader-elect=false --v=1
  start kube-scheduler "$(bin kube-scheduler)" \
    --kubeconfig "$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig "$PKI/scheduler.kubeconfig" \
    --authorization-kubeconfig "$PKI/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --cert-dir "$CLUSTER_DIR/kube-scheduler" \
    --leader-elect=false --v=1
  wait_for kube-controller-manager "kube-controller-manager to be healthy" healthz https://127.0.0.1:10257/healthz
  wait_for kube-scheduler "kube-scheduler to be healthy" healthz https://127.0.0.1:10259/healthz
}

node_has_ip() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" = "$NODE_IP" ]
}

# kube-proxy exits when its Node's IPs change (a DaemonSet would restart it), so it starts once the
# kubelet has registered the Node with its InternalIP.
start_node() {
  save_sysctls
  start kubelet "$(bin kubelet)" --config "$KUBELET_DIR/config.yaml" \
    --kubeconfig "$PKI/kubelet.kubeconfig" --root-dir "$KUBELET_DIR" \
    --volume-plugin-dir "$KUBELET_DIR/volume-plugins" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
  wait_for kubelet "the kubelet to be healthy" healthz http://127.0.0.1:10248/healthz
  wait_for kubelet "node $NODE_NAME to be registered with InternalIP $NODE_IP" node_has_ip
  start kube-proxy "$(bin kube-proxy)" --config "$CLUSTER_DIR/kube-proxy/config.yaml" --v=1
  wait_for kube-proxy "kube-proxy to be healthy" healthz http://127.0.0.1:10256/healthz
}

cluster_ready() {
  wait_for kubelet "node $NODE_NAME to be Ready" \
    kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  # Pods need their namespace's ServiceAccount and the kube-root-ca.crt ConfigMap.
  wait_for kube-controller-manager "the default ServiceAccount" kc -n default get serviceaccount default
  wait_for kube-controller-manager "the kube-root-ca.crt ConfigMap" kc -n default get configmap kube-root-ca.crt
}

write_env() {
  cat >"$ENV_FILE.tmp" <<EOF
# The running local cluster (hack/cluster/up.sh). Shell assignments; Go reads them too.
KUBECONFIG=$KUBECONFIG_FILE
KUBECTL=$KUBECTL
CTR=$(command -v ctr)
CONTAINERD_ADDRESS=$CONTAINERD_SOCK
CLUSTER_DIR=$CLUSTER_DIR
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
BRIDGE=$BRIDGE
POD_CIDR=$POD_CIDR
SERVICE_CIDR=$SERVICE_CIDR
API_SERVICE_IP=$API_SERVICE_IP
DNS_IP=$DNS_IP
CGROUP_PARENT=$CGROUP_PARENT
PAUSE_IMAGE=$PAUSE_REF
REGISTRY_HOST=$REGISTRY_HOST
REGISTRY_CA=$PKI/ca.crt
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# exited PID succeeds when the process is gone, or is a zombie whose other threads are gone too
# (the thread group's leader turns zombie while the other threads may still hold its files).
exited() {
  local state threads
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 0
  threads=$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  { [ -z "$state" ] || [ "$state" = Z ] || [ "$state" = X ]; } && [ "$threads" -le 1 ]
}

# restart NAME kills a running component with SIGKILL, as a crash would, waits until it is gone
# and starts it again.
restart() {
  local name=$1 pid deadline=$((SECONDS + 30))
  pid=$(pid_of "$name") || die "$name is not running: is the cluster up?"
  kill -KILL "$pid" 2>/dev/null || true # it may have exited just now: it is started below
  # Wait until it has closed its files (its listening sockets among them): its cmdline empties
  # earlier, while it still exits, and its parent may reap it late.
  while ! exited "$pid"; do
    [ $SECONDS -lt $deadline ] || die "$name (pid $pid) still runs 30 s after SIGKILL"
    sleep 0.05
  done
  log "$name: killed (pid $pid)"
  case $name in
    kube-apiserver) start_apiserver ;;
    etcd) start_etcd ;;
  esac
}

if [ -n "$RESTART" ]; then
  step "restarting $RESTART" restart "$RESTART"
  exit 0
fi

log "cluster directory $CLUSTER_DIR; node $NODE_NAME at $NODE_IP; Pods $POD_CIDR; Services $SERVICE_CIDR"
step "installing containerd, runc, CNI plugins, iptables (apt-get, once)" ensure_packages
step "building Kubernetes v1.37 binaries (hack/control-plane.sh, cached)" \
  "$CLUSTER_ROOT/hack/control-plane.sh" kube-apiserver kubectl etcd kubelet kube-scheduler \
  kube-controller-manager kube-proxy registry
step "building cluster tools (mkpki, mkimage)" build_tools
mkdir -p "$CLUSTER_DIR"
step "network: bridge $BRIDGE, local Service route, guard chain" setup_network
step "certificates and kubeconfigs" "$TOOLS_DIR/mkpki" -dir "$PKI" -node "$NODE_NAME" \
  -node-ip "$NODE_IP" -service-ip "$API_SERVICE_IP" -server "$API_SERVER"
step "configuration files and cgroup /$CGROUP_PARENT" configure
step "containerd" start_containerd
step "image registry on https://$REGISTRY_HOST" start_registry
step "images (pause and the project's images; built, then imported)" import_images
step "etcd" start_etcd
step "kube-apiserver" start_apiserver
step "RBAC for the API server's kubelet client" apiserver_rbac
step "kube-controller-manager and kube-scheduler" start_controllers
step "kubelet and kube-proxy (iptables mode)" start_node
step "node Ready, default ServiceAccount and root CA published" cluster_ready
step "every component still running" all_running
write_env
log "cluster up in $(_clock)s; kubeconfig: $KUBECONFIG_FILE (environment: $ENV_FILE)"
echo "$KUBECONFIG_FILE"
