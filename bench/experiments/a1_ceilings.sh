#!/usr/bin/env bash
# A1 (one enqueue per call) with parts of shardq taken out of its path, interleaved
# with the real server, to show where A1's time goes (docs/BENCHMARKS.md, eleventh
# round). Builds the tree with a1_ceilings.patch in a worktree under $WORK; the
# repository itself is not touched.
#   bench/experiments/a1_ceilings.sh [rounds]      (default 3; ~1 min per round)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
WORK=${WORK:-/tmp/shardq-a1-ceilings}
rm -rf "$WORK" && mkdir -p "$WORK"
git worktree add -f --detach "$WORK/src" HEAD >/dev/null
trap 'git worktree remove --force "$WORK/src"' EXIT
git -C "$WORK/src" apply "$PWD/bench/experiments/a1_ceilings.patch"
cmake -S "$WORK/src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$WORK/build" -j2 --target shardqd shardq_bench >/dev/null
for mode in echo memstore; do
  var=SHARDQ_$(echo "$mode" | tr '[:lower:]' '[:upper:]')
  printf '#!/bin/sh\n%s=1 exec %s "$@"\n' "$var" "$WORK/build/frontend/shardqd" \
    >"$WORK/$mode"
  chmod +x "$WORK/$mode"
done
ln -sf "$WORK/build/frontend/shardqd" "$WORK/real"
for round in $(seq "$ROUNDS"); do
  for mode in real memstore echo; do
    rate=$("$WORK/build/bench/shardq_bench" --runs 1 --phases A1 --no-threads \
      --no-references --shardqd "$WORK/$mode" 2>/dev/null | grep 'A1 enqueue' | cut -d'|' -f3)
    echo "round $round  $mode  A1 $rate items/s"
  done
done
