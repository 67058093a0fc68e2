#!/usr/bin/env bash
# Installs what is missing, builds, starts a private MariaDB in .data/mariadb and runs
# shardqd on it with 4 shard databases, listening on 127.0.0.1:50051. Ctrl-C stops
# both. Data persists in .data/ across runs (restart = recovery).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
DATA=${SHARDQ_DATA:-.data}
sock=$(scripts/mariadb.sh start "$DATA/mariadb")
trap 'scripts/mariadb.sh stop "$DATA/mariadb"' EXIT
echo "MariaDB: $sock"
echo "shardqd: ${SHARDQ_LISTEN:-127.0.0.1:50051}   (try: build/tools/shardqctl topics)"
build/frontend/shardqd --mysql-socket "$sock" --shards "${SHARDQ_SHARDS:-4}" \
  --listen "${SHARDQ_LISTEN:-127.0.0.1:50051}"
