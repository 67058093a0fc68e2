#!/usr/bin/env bash
# MariaDB's CPU per row for each statement a drained item costs (docs/BENCHMARKS.md,
# twelfth round), and what a claim's index moves add to it.
#
# A claim sets state = 2 and deliver_after = the lease deadline. Both columns are in
# the `ready_order` and `due` indexes, so each claimed row moves two secondary index
# entries and leaves two delete-marked ones for purge; an ack moves them again. This
# script runs each statement over a fresh copy of shardq's `items` table
# (schema/*.sql; ROWS ready items of 1 KiB), 100 rows by primary key per autocommit
# statement on one connection, with the bench's MariaDB settings (--no-defaults: flush
# at every commit, 128 MiB pool, 96 MiB log). It reports mariadbd's CPU (utime+stime)
# from the first statement until InnoDB's purge has cleared what they left (history
# length 0), per row: purge runs on the same cores as everything else.
#   claim:          the UPDATE of store/mysql_store.cc's LeaseRows, as it is;
#   claim in place: the same without state and deliver_after (a lease kept outside
#                   the indexes);
#   claim read:     LeaseRows' SELECT ... FOR UPDATE of the rows and their payloads;
#   ack:            MarkSucceeded's UPDATE (the final state, kept for retention);
#   delete:         DELETE by primary key (an ack without retention).
#   bench/experiments/index_moves.sh [rounds] [rows]   (default 3 rounds of 40,000)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
ROWS=${2:-40000}
WORK=${WORK:-/tmp/shardq-index-moves}
SOCK=$WORK/mysql.sock
rm -rf "$WORK" && mkdir -p "$WORK/tmp"
mariadb-install-db --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --user=root \
  --auth-root-authentication-method=normal >"$WORK/install.log" 2>&1
mariadbd --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --socket="$SOCK" \
  --skip-networking --user=root --pid-file="$WORK/pid" --log-error="$WORK/error.log" \
  --innodb-buffer-pool-size=128M --innodb-log-file-size=96M &
trap 'kill "$(cat "$WORK/pid")" 2>/dev/null || true' EXIT
sql() { mariadb --no-defaults --socket="$SOCK" -uroot -N -B "$@"; }
for _ in $(seq 1 300); do sql -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
sql -e "SET GLOBAL innodb_monitor_enable = 'trx_rseg_history_len'"
history() {
  sql -e "SELECT count FROM information_schema.INNODB_METRICS
    WHERE name = 'trx_rseg_history_len'"
}
purged() { while [ "$(history)" -gt 0 ]; do sleep 0.01; done; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$(cat "$WORK/pid")/stat"; }

# The schema as shardq creates it (its migrations in order), then ROWS ready items.
fill() {
  sql -e "DROP DATABASE IF EXISTS t; CREATE DATABASE t"
  cat schema/0*.sql | sql t
  sql t -e "INSERT INTO items (ns, topic, priority, state, deliver_after, lease_ms,
    enqueued_at, payload, metadata)
    SELECT 'bench', 'w1', seq % 10, $1, 1000 + seq, 30000, 1000 + seq,
      REPEAT('x', 1024), '' FROM seq_1_to_$ROWS"
  purged
}

# Prints "<wall ms> <CPU per row in 0.01 us>" for `stmt` (@ = the 100 ids) over all rows.
measure() {
  local stmt=$1 first start end c0 c1
  for ((first = 1; first <= ROWS; first += 100)); do
    echo "${stmt//@/id BETWEEN $first AND $((first + 99))};"
  done >"$WORK/statements.sql"
  c0=$(cpu_ticks)
  start=$(date +%s%N)
  sql t <"$WORK/statements.sql" >/dev/null
  end=$(date +%s%N)
  purged
  c1=$(cpu_ticks)
  echo "$(((end - start) / 1000000)) $(((c1 - c0) * 1000000 / ROWS))"
}

LEASE="lease_token = 7, attempts = attempts + 1, worker = 1,
  first_delivered_at = IF(first_delivered_at = 0, 5000, first_delivered_at),
  last_delivered_at = 5000"
declare -A STMT=(
  [claim]="UPDATE items SET state = 2, deliver_after = 5000 + lease_ms, $LEASE WHERE @"
  [claim_in_place]="UPDATE items SET $LEASE WHERE @"
  [claim_read]="SELECT id, ns, topic, priority, deliver_after, lease_ms, attempts,
    enqueued_at, payload, metadata, task_type, max_attempts FROM items
    WHERE @ AND state = 1 FOR UPDATE"
  [ack]="UPDATE items SET state = 3, finished_at = 6000, expires_at = NULL,
    deliver_after = 604805000 WHERE @ AND state = 2"
  [delete]="DELETE FROM items WHERE @"
)
declare -A FROM_STATE=([claim]=1 [claim_in_place]=1 [claim_read]=1 [ack]=2 [delete]=2)

echo "statement       round  wall ms  mariadbd CPU us/row"
for round in $(seq "$ROUNDS"); do
  for name in claim claim_in_place claim_read ack delete; do
    fill "${FROM_STATE[$name]}"
    read -r ms us <<<"$(measure "${STMT[$name]}")"
    printf '%-15s %5d  %7d  %d.%02d\n' "$name" "$round" "$ms" $((us / 100)) $((us % 100))
  done
done
