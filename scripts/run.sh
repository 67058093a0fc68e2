#!/usr/bin/env bash
# Installs what is missing, builds, starts a private MariaDB in .data/mariadb and runs
# shardqd on it with 4 shard databases, listening on 127.0.0.1:50051. Ctrl-C stops
# both (MariaDB only if this run started it: another run, or an operator, may still be
# using one that was already up; the run that started it stops it all the same).
# Data persists in .data/ across runs (restart = recovery).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
DATA=${SHARDQ_DATA:-.data}
# Under a lock, so that of two runs started together only the one that starts
# MariaDB stops it (the children do not inherit the lock's descriptor).
mkdir -p "$DATA/mariadb"
exec 9>"$DATA/mariadb/run.lock"
flock 9
if scripts/mariadb.sh status "$DATA/mariadb" 9>&-; then
  echo "MariaDB in $DATA/mariadb is already running: it stays up when shardqd stops"
else
  # Stopped under the lock too: a run that starts meanwhile must not find it still up.
  trap 'flock "$DATA/mariadb/run.lock" scripts/mariadb.sh stop "$DATA/mariadb"' EXIT
fi
sock=$(scripts/mariadb.sh start "$DATA/mariadb" 9>&-)
flock -u 9
exec 9>&-
echo "MariaDB: $sock"
echo "shardqd: ${SHARDQ_LISTEN:-127.0.0.1:50051}   (try: build/tools/shardqctl topics)"
build/frontend/shardqd --mysql-socket "$sock" --shards "${SHARDQ_SHARDS:-4}" \
  --listen "${SHARDQ_LISTEN:-127.0.0.1:50051}"
