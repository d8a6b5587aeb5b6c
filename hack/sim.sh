#!/usr/bin/env bash
# sim.sh runs the deterministic simulation of the lock engine (internal/sim).
#
#   hack/sim.sh                 SIM_SCHEDULES (default 100000) schedules with the safe faults,
#                               split over one shard per core, then the replay check and the
#                               known-defect check
#   SEED=<n> hack/sim.sh        that one schedule, with its whole trace (SIM_FAULTS=a,b picks
#                               the fault kinds, as a failing run printed them)
#
# A failing schedule prints its seed, its schedule, the violations and its trace; the script
# exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go test -c -o bin/sim.test ./internal/sim/

if [ -n "${SEED:-}" ]; then
  exec bin/sim.test -test.run '^TestSimulation$' -test.v -test.count=1
fi

total=${SIM_SCHEDULES:-100000}
first=${SIM_FIRST_SEED:-1}
shards=${SIM_SHARDS:-$(nproc)}
per=$(( (total + shards - 1) / shards ))
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
pids=()
for ((i = 0; i < shards; i++)); do
  f=$((first + i * per))
  n=$(( per < total - i * per ? per : total - i * per ))
  [ "$n" -gt 0 ] || break
  SIM_FIRST_SEED=$f SIM_SCHEDULES=$n bin/sim.test -test.run '^TestSimulation$' -test.v -test.count=1 -test.timeout 60m >"$out/shard-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then status=1; fi
  grep -h 'schedules in' "$out/shard-$i.log" | sed "s/^ */sim: shard $i: /" || true
done
echo "sim: $total schedules in $(( $(date +%s) - start )) s"
if [ "$status" -ne 0 ]; then
  grep -h -B2 -A400 -- '--- FAIL: TestSimulation/schedules/' "$out"/shard-*.log | head -2000
  # Replay each failing seed once, as a person would, and say whether it fails again.
  for seed in $(grep -ho -- '--- FAIL: TestSimulation/schedules/[0-9]*' "$out"/shard-*.log | grep -o '[0-9]*$' | head -20); do
    if SEED=$seed bin/sim.test -test.run '^TestSimulation$' -test.count=1 >/dev/null 2>&1; then
      echo "sim: SEED=$seed did not fail again on replay"
    else
      echo "sim: SEED=$seed fails again on replay"
    fi
  done
  echo "sim: FAILED (replay a schedule with the SEED=<n> make sim it printed)"
  exit 1
fi
bin/sim.test -test.run '^(TestReplay|TestSimFindsKnownDefects)$' -test.v -test.count=1 -test.timeout 30m \
  2>&1 | grep -E 'replayed|found by|seed [0-9]+:|FAIL|^ok|PASS$'
