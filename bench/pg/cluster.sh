#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for the baseline, so that 256 pgbench clients
# fit (max_connections=300) without touching the machine's cluster or other tests.
# Everything else is the installed server's default (synchronous_commit=on, fsync=on).
#
#   bench/pg/cluster.sh start   # prints the PGURL to export for bench/pg/run.sh
#   bench/pg/cluster.sh stop    # stops it and removes its directory
#
# Environment: PGBIN [/usr/lib/postgresql/<newest>/bin], PGPORT_BENCH [5499],
# PGDATA_BENCH [/var/tmp/cardgate-pg-bench] (same disk as the gateway's data, not tmpfs).
set -euo pipefail
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PORT=${PGPORT_BENCH:-5499}
DATA=${PGDATA_BENCH:-/var/tmp/cardgate-pg-bench}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
start)
    if [ ! -f "$DATA/PG_VERSION" ]; then
        mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
        as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
        {
            echo "port = $PORT"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$DATA'"
            echo "max_connections = 300"
            echo "synchronous_commit = on"
            echo "fsync = on"
        } | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
    fi
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start >/dev/null
    as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres cardgate_bench 2>/dev/null || true
    echo "export PGURL=postgres://postgres@127.0.0.1:$PORT/cardgate_bench"
    ;;
stop)
    if [ -f "$DATA/PG_VERSION" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
        rm -rf "$DATA"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
