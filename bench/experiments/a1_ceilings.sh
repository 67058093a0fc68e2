#!/usr/bin/env bash
# A1 (one enqueue per call) with parts of shardq taken out of its path, or committing
# differently, interleaved with the real server, to show where A1's time goes
# (docs/BENCHMARKS.md, eleventh and thirtieth rounds). Builds the tree with
# a1_ceilings.patch in a worktree under $WORK; the repository itself is not touched.
#   bench/experiments/a1_ceilings.sh [rounds]      (default 3; ~15 s per mode a round)
# MODES picks the servers, each a name the patch's switches are set for below
# (default "real memstore echo"), e.g. MODES="real spread2 spread4 post". Then it
# prints a store Write's latency by rows per Write on the idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
MODES=${MODES:-real memstore echo}
WORK=${WORK:-/tmp/shardq-a1-ceilings}
rm -rf "$WORK" && mkdir -p "$WORK"
switches() {
  case "$1" in
    real) echo "" ;;
    memstore) echo "SHARDQ_MEMSTORE=1" ;;
    echo) echo "SHARDQ_ECHO=1" ;;
    spread2) echo "SHARDQ_SPREAD=2" ;;
    spread4) echo "SHARDQ_SPREAD=4" ;;
    slot4) echo "SHARDQ_SLOT_MS=4" ;;
    post) echo "SHARDQ_POST_ANSWERS=1" ;;
    noindexes) echo "SHARDQ_DROP_INDEXES=expiry,due" ;;
    *) echo "unknown mode $1" >&2; exit 2 ;;
  esac
}
for mode in $MODES; do
  sw=$(switches "$mode")  # an unknown mode stops the script here
  printf '#!/bin/sh\n%s SHARDQ_TIMING=%s exec %s "$@"\n' "$sw" \
    "$WORK/$mode.timing" "$WORK/build/frontend/shardqd" >"$WORK/$mode"
  chmod +x "$WORK/$mode"
done
git worktree add -f --detach "$WORK/src" HEAD >/dev/null
trap 'git worktree remove --force "$WORK/src"' EXIT
git -C "$WORK/src" apply "$PWD/bench/experiments/a1_ceilings.patch"
cmake -S "$WORK/src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$WORK/build" -j2 --target shardqd shardq_bench write_latency >/dev/null
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    : >"$WORK/$mode.timing"  # this run's lines only
    rate=$("$WORK/build/bench/shardq_bench" --runs 1 --phases A1 --no-threads \
      --no-references --shardqd "$WORK/$mode" 2>"$WORK/$mode.log" |
      grep 'A1 enqueue' | cut -d'|' -f3) || rate="failed (see $WORK/$mode.log)"
    echo "round $round  $mode  A1 $rate items/s  $(grep calls "$WORK/$mode.timing" 2>/dev/null | tail -n 1)"
  done
done
"$WORK/build/bench/write_latency"
