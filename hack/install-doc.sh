#!/usr/bin/env bash
# install-doc.sh follows docs/install.md word for word: it runs the page's ```bash blocks of the
# phases asked for, in the page's order, each as the reader would paste it, in one bash with
# -euo pipefail from the repository root. Each ```bash block must follow a mark on the line just
# above it: "<!-- run: PHASE -->" (phases: install, check, upgrade, uninstall) or
# "<!-- not run: REASON -->"; an unmarked block, an unknown phase, an indented ```bash block or
# a shell block under another name (```sh, ```shell, ```console) is an error, so the page cannot
# grow a command that no test runs without saying why.
#
# Usage: hack/install-doc.sh PHASE...    run the blocks of these phases
#        hack/install-doc.sh --list      list every block: its line, its mark, its first line
#
# The blocks read what the page tells the reader to set (REGISTRY) and use kubectl, helm and
# make from PATH. hack/stack.sh up --from-registry runs the install, check and upgrade phases on
# the local cluster, e2e/product runs its tests on that install, and hack/stack.sh down runs the
# uninstall phase.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOC=$ROOT/docs/install.md
PHASES=" install check upgrade uninstall "

# blocks prints one record per ```bash block: LINE<TAB>MARK<TAB>PHASE, then the block's lines
# prefixed with "|", then a line "." (awk keeps it portable; no block line starts with a tab).
blocks() {
  awk '
    /^[[:space:]]*```[[:space:]]*(sh|shell|console|zsh|bash)[[:space:]]*$/ && !/^```bash[[:space:]]*$/ && !inblock {
      printf "docs/install.md:%d: shell blocks are written ```bash at the start of a line, so that this script sees them\n", NR > "/dev/stderr"; bad = 1
    }
    /^```bash[[:space:]]*$/ && !inblock {
      inblock = 1; mark = prev; phase = ""
      if (mark ~ /^<!-- run: [a-z]+ -->$/) { phase = mark; sub(/^<!-- run: /, "", phase); sub(/ -->$/, "", phase); kind = "run" }
      else if (mark ~ /^<!-- not run: .+ -->$/) kind = "not-run"
      else kind = "unmarked"
      printf "%d\t%s\t%s\n", NR, kind, phase
      next
    }
    /^```[[:space:]]*$/ && inblock { inblock = 0; print "."; prev = ""; next }
    inblock { print "|" $0; next }
    /[^[:space:]]/ { prev = $0 }
    END { if (inblock) { print "docs/install.md: unterminated code block" > "/dev/stderr"; exit 1 } if (bad) exit 1 }
  ' "$DOC"
}

# check_marks fails on an unmarked block or an unknown phase.
check_marks() {
  local line kind phase bad=0
  while IFS=$'\t' read -r line kind phase; do
    case $kind in
      unmarked) echo "docs/install.md:$line: a bash block needs <!-- run: PHASE --> or <!-- not run: REASON --> just above it" >&2; bad=1 ;;
      run) [[ $PHASES == *" $phase "* ]] || { echo "docs/install.md:$line: unknown phase \"$phase\" (want one of$PHASES)" >&2; bad=1; } ;;
    esac
  done < <(blocks | grep -v '^[|.]')
  return $bad
}

if [ "${1:-}" = --list ]; then
  check_marks
  blocks | awk -F'\t' '/^[0-9]/ { head = $1 "\t" ($2 == "run" ? "run: " $3 : $2); want = 1; next }
    want && /^\|/ { print head "\t" substr($0, 2); want = 0 }'
  exit 0
fi
[ $# -gt 0 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
for p in "$@"; do
  [[ $PHASES == *" $p "* ]] || { echo "install-doc.sh: unknown phase $p (want one of$PHASES)" >&2; exit 2; }
done
check_marks

# The script: each block is shown (its lines prefixed "    $ ") and then run, as if pasted.
script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
  echo "set -euo pipefail"
  printf 'cd %q\n' "$ROOT"
  blocks | awk -F'\t' -v want=" $* " '
    function q(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
    /^[0-9]/ { take = ($2 == "run" && index(want, " " $3 " ") > 0); head = "[docs/install.md:" $1 ", " $3 "]"; show = ""; body = ""; next }
    /^\./ { if (take) { print "printf \"%s\\n\" " q(head show) " >&2"; printf "%s", body } take = 0; next }
    take { line = substr($0, 2); show = show "\n    $ " line; body = body line "\n" }
  '
} >"$script"
n=$(grep -c '^printf "%s\\n" ' "$script" || true)
[ "$n" -gt 0 ] || { echo "install-doc.sh: docs/install.md has no block of phase(s) $*" >&2; exit 1; }
echo "install-doc.sh: running $n block(s) of docs/install.md (phases: $*)" >&2
bash "$script"
