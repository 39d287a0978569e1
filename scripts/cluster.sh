#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster owned by the project: its own data directory, port and
# socket directory, run as the `postgres` user (PostgreSQL refuses to run as root).
#
#   scripts/cluster.sh start <dir> <port>   initdb if needed, start, wait until ready
#   scripts/cluster.sh stop  <dir>          stop (fast) if running
#   scripts/cluster.sh psql  <dir> <port> [psql args...]
#
# With CAMPFIRE_WAL_FLUSH_DELAY_US set (the benchmark's --wal-flush-delay-us), `start` preloads
# bench/wal_flush_delay.c into the server: every WAL flush then takes that much longer, as on a
# network disk.
set -euo pipefail

PG_BIN=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
[ -x "$PG_BIN/initdb" ] || PG_BIN=/usr/lib/postgresql/15/bin

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:?usage: cluster.sh start|stop|psql <dir> [port]}
dir=${2:?data directory required}

case "$cmd" in
start)
    port=${3:?port required}
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
        echo "==> initdb $dir"
        as_postgres "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --no-sync >/dev/null
        cat >>"$dir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = on
# The event notifier (one background worker per busy database) and the log's horizon need the preload.
shared_preload_libraries = 'pg_campfire'
max_worker_processes = 40
EOF
    fi
    preload=()
    if [ "${CAMPFIRE_WAL_FLUSH_DELAY_US:-0}" -gt 0 ]; then
        cc -O2 -shared -fPIC -o "$dir/wal_flush_delay.so" "$(dirname "$0")/../bench/wal_flush_delay.c" -ldl
        preload=(env LD_PRELOAD="$dir/wal_flush_delay.so" CAMPFIRE_WAL_FLUSH_DELAY_US="$CAMPFIRE_WAL_FLUSH_DELAY_US")
        echo "==> every WAL flush of this cluster takes ${CAMPFIRE_WAL_FLUSH_DELAY_US} µs longer (an emulated network disk)"
    fi
    echo "==> starting PostgreSQL on 127.0.0.1:$port (data $dir)"
    as_postgres "${preload[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    if [ ${#preload[@]} -gt 0 ] && ! grep -q wal_flush_delay.so "/proc/$(head -1 "$dir/postmaster.pid")/maps"; then
        echo "the server did not load $dir/wal_flush_delay.so (see $dir/server.log)" >&2
        exit 1
    fi
    ;;
stop)
    if [ -f "$dir/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    fi
    ;;
psql)
    port=${3:?port required}
    shift 3
    psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
