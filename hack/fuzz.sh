#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target in the module for the given time each (default 10s).
# Go can fuzz only one target per invocation, so each is run on its own, with -short so that no
# test package starts a control plane for it (fuzz targets are unit tests).
set -euo pipefail
fuzztime=${1:-10s}
cd "$(dirname "$0")/.."
found=0
while IFS=: read -r file line; do
  name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$line")
  pkg=./$(dirname "$file")
  found=$((found + 1))
  echo "fuzz: $name in $pkg for $fuzztime"
  go test -short -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg"
done < <(git ls-files --cached --others --exclude-standard '*_test.go' | xargs -r grep -H -E '^func Fuzz[A-Za-z0-9_]*\(' || true)
echo "fuzz: ran $found target(s)"
