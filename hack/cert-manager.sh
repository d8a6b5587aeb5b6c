#!/usr/bin/env bash
# cert-manager.sh builds hack/cert-manager (cert-manager's real controllers and cainjector in one
# test binary, from the Go module proxy only) into a per-version cache outside the repository,
# and copies cert-manager's CRDs next to it. A binary built from the current sources is skipped.
# It prints each step and how long it took.
#
# Usage: hack/cert-manager.sh               build the binary and copy the CRDs (if needed)
#        hack/cert-manager.sh --print-bin   print the path of the binary
#        hack/cert-manager.sh --print-crds  print the directory of the CRD YAMLs (copying them
#                                           there first if needed)
#
# Environment:
#   METAPARTICLE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/metaparticle-sync)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cert-manager"
MODULE=github.com/cert-manager/cert-manager
# The cert-manager version is the one hack/cert-manager/go.mod requires.
VERSION=$(awk -v m="$MODULE" '{ for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$SRC/go.mod")
[ -n "$VERSION" ] || { echo "[cert-manager] no $MODULE requirement in $SRC/go.mod" >&2; exit 1; }
CACHE=${METAPARTICLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaparticle-sync}
DIR="$CACHE/cert-manager/$VERSION"
BIN="$DIR/bin/cert-manager-controllers"
CRDS="$DIR/crds"

log() { printf '[cert-manager] %s\n' "$*" >&2; }

# step DESCRIPTION CMD... runs CMD, then prints how long it took.
step() {
  local desc=$1; shift
  local start=$SECONDS
  log "$desc ..."
  "$@"
  log "$desc: done in $((SECONDS - start))s"
}

export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
# go.sum is committed: never let a build rewrite it.
export GOFLAGS="-mod=readonly -buildvcs=false"

# source_hash identifies the sources the binary is built from, so an edit rebuilds it.
source_hash() {
  (cd "$SRC" && cat go.mod go.sum ./*.go) | sha256sum | cut -d' ' -f1
}

build_bin() {
  mkdir -p "$DIR/bin"
  local tmp="$BIN.tmp.$$"
  (
    cd "$SRC"
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X $MODULE/pkg/util.AppVersion=$VERSION -X $MODULE/pkg/util.AppGitCommit=$VERSION" \
      -o "$tmp" .
  )
  # Renames are atomic: concurrent test packages see either no binary or a whole one.
  mv -f "$tmp" "$BIN"
  echo "$1" >"$BIN.sha256"
}

copy_crds() {
  local dir tmp="$CRDS.tmp.$$"
  dir=$(cd "$SRC" && go mod download -json "$MODULE" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir/deploy/crds" ] || { log "no deploy/crds in $dir"; exit 1; }
  mkdir -p "$tmp"
  cp "$dir"/deploy/crds/*.yaml "$tmp/"
  chmod 0644 "$tmp"/*.yaml
  # Another process may have won the race; its copy is as good as ours.
  mv -T "$tmp" "$CRDS" 2>/dev/null || rm -rf "$tmp"
}

ensure_crds() {
  if compgen -G "$CRDS/*.yaml" >/dev/null; then
    log "CRDs: cached at $CRDS"
  else
    step "copying the cert-manager $VERSION CRDs from the module cache" copy_crds
  fi
}

case ${1:-} in
  --print-bin) echo "$BIN"; exit 0 ;;
  --print-crds) ensure_crds; echo "$CRDS"; exit 0 ;;
  -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) log "unknown argument: $1"; exit 2 ;;
esac

total=$SECONDS
log "cache: $DIR"
hash=$(source_hash)
built() { [ -x "$BIN" ] && [ "$(cat "$BIN.sha256" 2>/dev/null)" = "$hash" ]; }
if built; then
  log "cert-manager-controllers: cached at $BIN"
else
  # Test packages run in parallel may all ask for the binary: one builds, the others wait.
  mkdir -p "$DIR"
  exec 9>"$DIR/.build.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if built; then
    log "cert-manager-controllers: built meanwhile at $BIN"
  else
    step "building cert-manager-controllers (cert-manager $VERSION)" build_bin "$hash"
  fi
fi
ensure_crds
log "ready in $((SECONDS - total))s"
