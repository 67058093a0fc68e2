#!/usr/bin/env bash
# shardq_bench's phases under MariaDB settings that keep durability (docs/BENCHMARKS.md,
# twenty-fourth round). Each NAME="mariadbd options" is one arm; each round runs every
# arm once, in a rotating order, on one private MariaDB restarted with the arm's
# options (the same data directory; the bench makes fresh databases per run). Each
# run is `shardq_bench --runs 1 --no-threads --fetch 100` with the references, so the
# ratios compare like with like. It prints each run's figures, then each arm's
# medians, and leaves every run's JSON in $WORK.
#   bench/experiments/mariadb_settings.sh PHASES ROUNDS NAME="options" ...
#   e.g. ... A1,A2,B2 6 base="" purge1="--innodb-purge-threads=1"
# Every arm also gets the bench's own settings first (128 MiB pool, 96 MiB log;
# an arm's options come after them, so it may override them). EXTRA adds bench options
# (EXTRA="--scale 0.05" for a quick try).
set -euo pipefail
cd "$(dirname "$0")/../.."
PHASES=${1:?usage: mariadb_settings.sh PHASES ROUNDS NAME=options ...}
ROUNDS=${2:?usage: mariadb_settings.sh PHASES ROUNDS NAME=options ...}
shift 2
WORK=${WORK:-/tmp/shardq-mariadb-settings}
BENCH=${BENCH:-build/bench/shardq_bench}
SHARDQD=${SHARDQD:-build/frontend/shardqd}
SOCK=$WORK/mysql.sock
names=() opts=()
for arm in "$@"; do names+=("${arm%%=*}") opts+=("${arm#*=}"); done
rm -rf "$WORK"
# The service's own MariaDB script, with the bench's pool and log sizes and the arm's
# options after them.
start() {
  SHARDQ_MARIADB_ARGS="--innodb-buffer-pool-size=128M --innodb-log-file-size=96M $1" \
    scripts/mariadb.sh start "$WORK" >/dev/null
}
stop() { scripts/mariadb.sh stop "$WORK"; }
trap stop EXIT

n=${#names[@]}
for round in $(seq 1 "$ROUNDS"); do
  for j in $(seq 0 $((n - 1))); do
    k=$(((round + j) % n))
    start "${opts[$k]}"
    # shellcheck disable=SC2086
    "$BENCH" --runs 1 --phases "$PHASES" --no-threads --fetch 100 ${EXTRA:-} --mysql-socket "$SOCK" \
      --shardqd "$SHARDQD" --json "$WORK/${names[$k]}.$round.json" >"$WORK/${names[$k]}.$round.log" 2>&1
    stop
    echo "round $round: ${names[$k]} done"
  done
done

bench/experiments/medians.py "$WORK" "${names[@]}"
