#!/usr/bin/env bash
# images.sh builds container images from the project's static binaries, without Docker or a
# registry, and imports them into the local cluster's containerd.
#
# Usage: hack/cluster/images.sh [--import | --no-import] [--pause] [--oci DIR] [NAME=PACKAGE[@USER]...]
#   With no NAME=PACKAGE arguments it builds every image of hack/cluster/images.list whose package
#   exists; arguments replace the list. --pause also builds the cluster's pause image.
#   --import imports into the running cluster (an error if none runs); --no-import only builds;
#   by default it imports when the cluster is running and this is root.
#   --oci DIR also writes each image for linux/amd64 and linux/arm64, as one OCI image index in
#   the OCI image layout DIR/NAME (make images; make push pushes those).
#   It prints one line per image, "REF TARBALL" (or "REF TARBALL LAYOUT" with --oci), on stdout.
#
# Environment: IMAGE_TAG (default: the chart's appVersion, or "dev"), IMAGE_REPO (default
# docker.io/metaparticle).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

chart=$CLUSTER_ROOT/charts/metaparticle-sync/Chart.yaml
default_tag=dev
if [ -f "$chart" ]; then
  default_tag=$(awk -F'"' '/^appVersion:/ {print $2}' "$chart")
  [ -n "$default_tag" ] || default_tag=dev
fi
IMAGE_TAG=${IMAGE_TAG:-$default_tag}
IMAGE_REPO=${IMAGE_REPO:-docker.io/metaparticle}
PAUSE_REF=docker.io/metaparticle/sync-pause:1.0

mode=auto pause=0 oci=
entries=()
while [ $# -gt 0 ]; do
  a=$1
  shift
  case $a in
    --oci)
      [ $# -gt 0 ] || die "--oci needs a directory"
      oci=$1
      shift
      ;;
    --import) mode=import ;;
    --no-import) mode=build ;;
    --pause) pause=1 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) entries+=("$a") ;;
    *) die "unknown argument $a (want NAME=PACKAGE[@USER])" ;;
  esac
done
if [ ${#entries[@]} -eq 0 ]; then
  while read -r name pkg user _; do
    [[ -z $name || $name == \#* ]] && continue
    entries+=("$name=$pkg${user:+@$user}")
  done <"$CLUSTER_ROOT/hack/cluster/images.list"
fi

if [ "$mode" = auto ]; then
  mode=build
  if [ "$(id -u)" -eq 0 ] && [ -S "$CONTAINERD_SOCK" ] && pid_of containerd >/dev/null; then mode=import; fi
elif [ "$mode" = import ]; then
  require_root images
  pid_of containerd >/dev/null || die "no local cluster is running (make cluster-up)"
fi

[ -z "$oci" ] || mkdir -p "$oci"
mkdir -p "$IMAGES_DIR" "$TOOLS_DIR"
# mkimage is built once into the cache; go build skips it when it is up to date.
(cd "$CLUSTER_ROOT" && CGO_ENABLED=0 go build -trimpath -o "$TOOLS_DIR/mkimage" ./hack/tools/mkimage)
# A new mkimage rebuilds every image; --oci builds for the platforms it names.
MKIMAGE_SUM=$(sha256sum "$TOOLS_DIR/mkimage" | cut -d' ' -f1)
PLATFORMS=$("$TOOLS_DIR/mkimage" -print-platforms)

# build_image NAME PACKAGE USER REF: builds the binary and, when it changed, the tarball.
build_image() {
  local name=$1 pkg=$2 user=$3 ref=$4
  local exe=${pkg##*/} dir=$IMAGES_DIR/$name
  local tar=$IMAGES_DIR/$name.tar
  mkdir -p "$dir"
  (cd "$CLUSTER_ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/$exe" "$pkg")
  # Rebuild when the binary, the reference or the user changed.
  local stamp sum
  sum=$(sha256sum "$dir/$exe" | cut -d' ' -f1)
  stamp="$ref $user $sum $MKIMAGE_SUM"
  if [ ! -f "$tar" ] || [ "$(cat "$tar.stamp" 2>/dev/null)" != "$stamp" ]; then
    "$TOOLS_DIR/mkimage" -o "$tar" -ref "$ref" -file "/$exe=$dir/$exe" -user "$user" \
      -label "org.opencontainers.image.source=https://github.com/metaparticle-io/sync"
    echo "$stamp" >"$tar.stamp"
  fi
  if [ "$mode" = import ]; then
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tar" >/dev/null
  fi
  if [ -z "$oci" ]; then
    echo "$ref $tar"
    return 0
  fi
  # The same image for every published platform, cross-compiled, as one index.
  local arch sums=
  for arch in $PLATFORMS; do
    mkdir -p "$dir/$arch"
    (cd "$CLUSTER_ROOT" && CGO_ENABLED=0 GOARCH=$arch go build -trimpath -ldflags "-s -w" -o "$dir/$arch/$exe" "$pkg")
    sums+=" $(sha256sum "$dir/$arch/$exe" | cut -d' ' -f1)"
  done
  # Published images also name their version, title and licence. That keeps their config, and so
  # their image ID, apart from the imported archive's: containerd 1.6's CRI keeps one record per
  # image ID and drops the imported image's name once the same ID is pulled under another.
  local args=(-oci "$oci/$name" -ref "$ref" -file "/$exe=$dir/{arch}/$exe" -user "$user"
    -label "org.opencontainers.image.source=https://github.com/metaparticle-io/sync"
    -label "org.opencontainers.image.version=$IMAGE_TAG" -label "org.opencontainers.image.title=$name"
    -label "org.opencontainers.image.licenses=Apache-2.0")
  # Rebuild when a binary, mkimage or its arguments changed.
  stamp="$sums $MKIMAGE_SUM ${args[*]}"
  if [ ! -f "$oci/$name/index.json" ] || [ "$(cat "$oci/$name.stamp" 2>/dev/null)" != "$stamp" ]; then
    "$TOOLS_DIR/mkimage" "${args[@]}"
    echo "$stamp" >"$oci/$name.stamp"
  fi
  echo "$ref $tar $oci/$name"
}

built=0
if [ "$pause" = 1 ]; then
  build_image sync-pause ./hack/tools/pause 65535:65535 "$PAUSE_REF"
  built=$((built + 1))
fi
for e in "${entries[@]}"; do
  name=${e%%=*} rest=${e#*=}
  pkg=${rest%@*} user=65532:65532
  [[ $rest == *@* ]] && user=${rest##*@}
  [ "$user" = root ] && user=0
  [[ $pkg == ./* ]] || die "$name: package $pkg must be a ./relative path in this module"
  if [ ! -d "$CLUSTER_ROOT/$pkg" ]; then
    log "image $name: package $pkg does not exist (yet); skipped"
    continue
  fi
  build_image "$name" "$pkg" "$user" "$IMAGE_REPO/$name:$IMAGE_TAG"
  built=$((built + 1))
done
log "$built image(s) built$([ -n "$oci" ] && echo " (also for ${PLATFORMS// /, } in $oci)")$([ "$mode" = import ] && echo " and imported into the local cluster")"
