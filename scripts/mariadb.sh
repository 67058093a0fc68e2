#!/usr/bin/env bash
# A private MariaDB for shardq: its own data directory and unix socket, no TCP, no
# systemd. InnoDB keeps its durable default (flush the log at every commit). The redo
# log is 1 GiB instead of 96 MiB: a queue writes every item several times, and with a
# small log InnoDB must flush pages to free log space while commits wait (C's p99 37 ->
# 24 ms in docs/BENCHMARKS.md); its size does not change what a commit guarantees.
#
#   scripts/mariadb.sh start DIR   # initialises DIR on first use; prints the socket
#   scripts/mariadb.sh stop DIR
#   scripts/mariadb.sh status DIR  # exit 0 when DIR's MariaDB is running
# SHARDQ_MARIADB_ARGS: more mariadbd options, after these (so they may override them);
# bench/experiments/mariadb_settings.sh uses it.
set -euo pipefail
cmd=${1:?usage: mariadb.sh start|stop|status DIR}
dir=$(realpath -m "${2:?usage: mariadb.sh start|stop|status DIR}")
sock="$dir/mysql.sock"
pidfile="$dir/mariadbd.pid"

# Running: the pidfile names a live mariadbd of this data directory (after a kill -9
# or a reboot a stale pidfile's pid may belong to another process, which must be
# neither taken for MariaDB nor killed by stop).
running() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "mariadbd.*--datadir=$dir/data"
}

case "$cmd" in
  start)
    mkdir -p "$dir/tmp"
    if [ ! -d "$dir/data/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --user=root \
        --auth-root-authentication-method=normal >"$dir/install.log" 2>&1
    fi
    if ! running; then
      # shellcheck disable=SC2086  # a list of options
      mariadbd --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --socket="$sock" --skip-networking \
        --user=root --pid-file="$pidfile" --log-error="$dir/error.log" \
        --innodb-buffer-pool-size=256M --innodb-log-file-size=1G ${SHARDQ_MARIADB_ARGS:-} \
        </dev/null >>"$dir/error.log" 2>&1 &
      for _ in $(seq 1 300); do
        mariadb --no-defaults --socket="$sock" -uroot -e 'select 1' >/dev/null 2>&1 && break
        sleep 0.1
      done
      mariadb --no-defaults --socket="$sock" -uroot -e 'select 1' >/dev/null 2>&1 || {
        echo "MariaDB did not start; see $dir/error.log" >&2
        kill %1 2>/dev/null || true
        exit 1
      }
    fi
    echo "$sock"
    ;;
  stop)
    if running; then
      kill "$(cat "$pidfile")"
      while running; do sleep 0.1; done
    fi
    ;;
  status) running ;;
  *) echo "usage: mariadb.sh start|stop|status DIR" >&2; exit 2 ;;
esac
