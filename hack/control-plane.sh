#!/usr/bin/env bash
# control-plane.sh builds the Kubernetes binaries this project tests against, from the Go module
# proxy only, into a per-version cache outside the repository. Whatever is already built is
# skipped. It prints each step and how long it took.
#
# Usage: hack/control-plane.sh [component...]
#   components: kube-apiserver kubectl etcd helm kubelet kube-scheduler kube-controller-manager
#               kube-proxy registry (default: kube-apiserver kubectl etcd helm); registry is the
#               CNCF Distribution registry the local cluster runs on loopback (hack/cluster)
#   hack/control-plane.sh --print-assets   prints the envtest assets directory (KUBEBUILDER_ASSETS)
#   hack/control-plane.sh --print-bin NAME prints the path of one built binary
#
# Environment:
#   METAPARTICLE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/metaparticle-sync)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
HELM_VERSION=${HELM_VERSION:-4.3.1}
REGISTRY_VERSION=${REGISTRY_VERSION:-3.1.2}
CACHE=${METAPARTICLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaparticle-sync}

STAGING_VERSION="0.${K8S_VERSION#1.}"
K8S_DIR="$CACHE/kubernetes/v$K8S_VERSION"
ETCD_DIR="$CACHE/etcd/v$ETCD_VERSION"
HELM_DIR="$CACHE/helm/v$HELM_VERSION"
REGISTRY_DIR="$CACHE/registry/v$REGISTRY_VERSION"
ASSETS_DIR="$CACHE/envtest/k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION"

# Staging modules of k8s.io/kubernetes: its go.mod points them at ./staging, which a dependent
# module cannot see, so each is replaced with its published version.
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
  kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver streaming)

log() { printf '[control-plane] %s\n' "$*" >&2; }

# step DESCRIPTION CMD... runs CMD, then prints how long it took.
step() {
  local desc=$1; shift
  local start=$SECONDS
  log "$desc ..."
  "$@"
  log "$desc: done in $((SECONDS - start))s"
}

export GOFLAGS=-mod=mod
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

k8s_module() {
  mkdir -p "$K8S_DIR/src"
  (
    cd "$K8S_DIR/src"
    {
      echo "module metaparticle.local/k8s-build"
      echo
      echo "go 1.26"
      echo
      echo "require k8s.io/kubernetes v$K8S_VERSION"
      echo
      echo "replace ("
      for m in "${STAGING[@]}"; do echo "	k8s.io/$m => k8s.io/$m v$STAGING_VERSION"; done
      echo ")"
    } >go.mod
    printf 'package main\n\nfunc main() {}\n' >main.go
    go mod download k8s.io/kubernetes
    touch .ready
  )
}

build_k8s() {
  local cmd=$1
  local out="$K8S_DIR/bin/$cmd"
  [ -x "$out" ] && return 0
  [ -f "$K8S_DIR/src/.ready" ] || step "fetching the k8s.io/kubernetes v$K8S_VERSION module graph" k8s_module
  mkdir -p "$K8S_DIR/bin"
  local ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    ld+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
    ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$K8S_DIR/src"
    # kubelet needs cgo-free builds too; every binary here is static.
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ld" -o "$out.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$out.tmp" "$out"
  )
}

build_etcd() {
  local out="$ETCD_DIR/bin/etcd"
  [ -x "$out" ] && return 0
  mkdir -p "$ETCD_DIR/src" "$ETCD_DIR/bin"
  (
    cd "$ETCD_DIR/src"
    {
      echo "module metaparticle.local/etcd-build"
      echo
      echo "go 1.26"
      echo
      echo "require go.etcd.io/etcd/server/v3 v$ETCD_VERSION"
      echo
      echo "replace ("
      for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
        echo "	go.etcd.io/etcd/$m => go.etcd.io/etcd/$m v$ETCD_VERSION"
      done
      echo ")"
    } >go.mod
    printf 'package main\n\nfunc main() {}\n' >main.go
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3
    mv "$out.tmp" "$out"
  )
}

build_helm() {
  local out="$HELM_DIR/bin/helm"
  [ -x "$out" ] && return 0
  mkdir -p "$HELM_DIR/src" "$HELM_DIR/bin"
  (
    cd "$HELM_DIR/src"
    {
      echo "module metaparticle.local/helm-build"
      echo
      echo "go 1.26"
      echo
      echo "require helm.sh/helm/v4 v$HELM_VERSION"
    } >go.mod
    printf 'package main\n\nfunc main() {}\n' >main.go
    local v=helm.sh/helm/v4/internal/version
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X $v.version=v$HELM_VERSION -X $v.gitTreeState=clean" \
      -o "$out.tmp" helm.sh/helm/v4/cmd/helm
    mv "$out.tmp" "$out"
  )
}

# build_registry builds github.com/distribution/distribution's registry (the reference OCI
# registry, which Docker Hub and most hosted registries descend from).
build_registry() {
  local out="$REGISTRY_DIR/bin/registry"
  [ -x "$out" ] && return 0
  mkdir -p "$REGISTRY_DIR/src" "$REGISTRY_DIR/bin"
  (
    cd "$REGISTRY_DIR/src"
    {
      echo "module metaparticle.local/registry-build"
      echo
      echo "go 1.26"
      echo
      echo "require github.com/distribution/distribution/v3 v$REGISTRY_VERSION"
    } >go.mod
    printf 'package main\n\nfunc main() {}\n' >main.go
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" \
      github.com/distribution/distribution/v3/cmd/registry
    mv "$out.tmp" "$out"
  )
}

bin_path() {
  case $1 in
    etcd) echo "$ETCD_DIR/bin/etcd" ;;
    helm) echo "$HELM_DIR/bin/helm" ;;
    registry) echo "$REGISTRY_DIR/bin/registry" ;;
    *) echo "$K8S_DIR/bin/$1" ;;
  esac
}

build() {
  local c=$1 path
  path=$(bin_path "$c")
  if [ -x "$path" ]; then
    log "$c: cached at $path"
    return 0
  fi
  case $c in
    etcd) step "building etcd v$ETCD_VERSION" build_etcd ;;
    helm) step "building helm v$HELM_VERSION" build_helm ;;
    registry) step "building registry v$REGISTRY_VERSION" build_registry ;;
    kube-apiserver | kubectl | kubelet | kube-scheduler | kube-controller-manager | kube-proxy)
      step "building $c v$K8S_VERSION" build_k8s "$c" ;;
    *)
      log "unknown component: $c"
      exit 2
      ;;
  esac
}

# assets links kube-apiserver, etcd and kubectl into the directory envtest reads.
assets() {
  mkdir -p "$ASSETS_DIR"
  for c in kube-apiserver kubectl etcd; do ln -sf "$(bin_path "$c")" "$ASSETS_DIR/$c"; done
}

case ${1:-} in
  --print-assets) echo "$ASSETS_DIR"; exit 0 ;;
  --print-bin) bin_path "${2:?component name}"; exit 0 ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kube-apiserver kubectl etcd helm)
total=$SECONDS
log "cache: $CACHE"
for c in "${components[@]}"; do build "$c"; done
assets
log "ready in $((SECONDS - total))s; KUBEBUILDER_ASSETS=$ASSETS_DIR"
