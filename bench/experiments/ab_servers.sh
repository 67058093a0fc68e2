#!/usr/bin/env bash
# Two shardqd builds against each other on the bench's phases (docs/BENCHMARKS.md,
# twenty-fifth round): each round runs one `shardq_bench --runs 1` of each, in an
# order that alternates, on one private MariaDB (the bench makes fresh databases per
# run). It prints each build's medians and leaves every run's JSON in $WORK.
#   bench/experiments/ab_servers.sh PHASES ROUNDS BASE_SHARDQD NEW_SHARDQD
#   e.g. ... E 20 /tmp/base/build/frontend/shardqd build/frontend/shardqd
# Build the base in a worktree (git worktree add /tmp/base <commit>; cmake; make
# shardqd). No references and no thread counts; EXTRA adds bench options
# (EXTRA="--scale 0.05" for a quick try).
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: ab_servers.sh PHASES ROUNDS BASE_SHARDQD NEW_SHARDQD"
PHASES=${1:?$usage}
ROUNDS=${2:?$usage}
bins=("${3:?$usage}" "${4:?$usage}")
names=(base new)
WORK=${WORK:-/tmp/shardq-ab-servers}
BENCH=${BENCH:-build/bench/shardq_bench}
rm -rf "$WORK"
sock=$(SHARDQ_MARIADB_ARGS="--innodb-buffer-pool-size=128M --innodb-log-file-size=96M" \
  scripts/mariadb.sh start "$WORK/mariadb")
trap 'scripts/mariadb.sh stop "$WORK/mariadb"' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for j in 0 1; do
    k=$(((round + j) % 2))
    # shellcheck disable=SC2086
    "$BENCH" --runs 1 --phases "$PHASES" --no-references --no-threads --fetch 100 \
      ${EXTRA:-} --mysql-socket "$sock" --shardqd "${bins[$k]}" \
      --json "$WORK/${names[$k]}.$round.json" >"$WORK/${names[$k]}.$round.log" 2>&1
    echo "round $round: ${names[$k]} done"
  done
done

bench/experiments/medians.py "$WORK" "${names[@]}"
