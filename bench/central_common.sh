# Shared by bench/central_lag.sh and bench/pg_outage.sh (sourced, not run): a private
# PostgreSQL cluster for the central store, a fresh gateway with the demo campus, a
# sampler of the central store's gauges, and the check that the store holds exactly
# what the journal does.
#
# The caller sets OUT (where results go) and sources this file from the repository root.

DATA_ROOT=${DATA_ROOT:-/var/tmp}
PGPORT_CENTRAL=${PGPORT_CENTRAL:-5498}
PGDATA_CENTRAL=${PGDATA_CENTRAL:-$DATA_ROOT/cardgate-pg-central}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
GW=target/release/cardgate
LT=target/release/cardgate-loadtest
PG_URL="postgres://postgres@127.0.0.1:$PGPORT_CENTRAL/cardgate_central"

gw_pid="" sampler_pid="" hog_pids="" data_dir=""

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# A throwaway cluster with the server's defaults (synchronous_commit on, fsync on), on
# the gateway's disk.
pg_init() {
    pg_destroy
    mkdir -p "$PGDATA_CENTRAL"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA_CENTRAL"
    as_pg "$PGBIN/initdb" -D "$PGDATA_CENTRAL" -U postgres --auth=trust >/dev/null
    {
        echo "port = $PGPORT_CENTRAL"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$PGDATA_CENTRAL'"
        echo "synchronous_commit = on"
        echo "fsync = on"
    } | as_pg tee -a "$PGDATA_CENTRAL/postgresql.conf" >/dev/null
    pg_start
    as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT_CENTRAL" -U postgres cardgate_central
}
pg_start() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA_CENTRAL" -l "$PGDATA_CENTRAL/server.log" -w start >/dev/null; }
# Fast shutdown: open connections are cut, as when the database server goes away.
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA_CENTRAL" -m fast -w stop >/dev/null; }
pg_destroy() {
    if [ -f "$PGDATA_CENTRAL/PG_VERSION" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_CENTRAL" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PGDATA_CENTRAL"
}
psql_c() { psql -X -q -t -A -h 127.0.0.1 -p "$PGPORT_CENTRAL" -U postgres -d cardgate_central -c "$1"; }

# Keeps one core busy, as other work on a shared server does, until cleanup.
competing_start() {
    sh -c 'while :; do :; done' &
    hog_pids="$hog_pids $!"
}

central_cleanup() {
    for p in $sampler_pid $gw_pid $hog_pids; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "$data_dir" ] || rm -rf "$data_dir"
    if [ "${BACKEND:-}" = pg ] && [ -z "${KEEP_PG:-}" ]; then pg_destroy; fi
}

# gateway_start CENTRAL_URL LOG: a fresh data directory and demo campus; sets gw_pid,
# addr, maddr.
gateway_start() {
    local url=$1 log=$2
    data_dir=$(mktemp -d "$DATA_ROOT/cardgate-central.XXXXXX")
    # The log exists before the first read: the background job's redirect may open it
    # after the loop's first sed, whose failure would end the script under set -e.
    : >"$log"
    "$GW" serve --demo --data-dir "$data_dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --central "$url" >"$log" 2>&1 &
    gw_pid=$!
    addr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
        [ -n "$addr" ] && break
        kill -0 "$gw_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "the gateway did not start" >&2; exit 1; }
    maddr=$(sed -n 's/.*kind="metrics" addr=\([0-9.:]*\).*/\1/p' "$log")
}

gateway_stop() {
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
    gw_pid=""
    rm -rf "$data_dir"
    data_dir=""
}

# One line per sample: unix time, backlog, oldest unshipped (s), shipped entry id,
# durable entry id, store up (1/0), journal bytes on disk, resident KiB.
gauges() {
    local m
    m=$(curl -s --max-time 2 "http://$maddr/metrics") || return 1
    awk -v t="$(date +%s.%N)" -v rss="$(awk '/^VmRSS/ {print $2}' /proc/"$gw_pid"/status 2>/dev/null)" '
        $1 == "cardgate_central_backlog_entries" {b = $2}
        $1 == "cardgate_central_oldest_unshipped_seconds" {o = $2}
        $1 == "cardgate_central_shipped_entry_id" {s = $2}
        $1 == "cardgate_journal_durable_entry_id" {d = $2}
        $1 == "cardgate_central_up" {u = $2}
        $1 == "cardgate_journal_size_bytes" {j = $2}
        END {printf "%s %d %.3f %d %d %d %d %d\n", t, b, o, s, d, u, j, rss}' <<<"$m"
}

# sampler_start FILE [INTERVAL]: samples the gauges until sampler_stop.
sampler_start() {
    local file=$1 every=${2:-1}
    ( while sleep "$every"; do gauges || true; done ) >>"$file" &
    sampler_pid=$!
}
sampler_stop() { kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""; }

# Waits until the flusher has shipped everything durable (at most $1 seconds); prints
# how long it took.
wait_drained() {
    local limit=$1 t0 line
    t0=$(date +%s.%N)
    while :; do
        line=$(gauges || true)
        set -- $line
        if [ -n "$line" ] && [ "$2" = 0 ] && [ "$4" = "$5" ] && [ "$5" != 0 ]; then break; fi
        if awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN {exit !(b - a > l)}'; then
            echo "not drained within ${limit} s" >&2
            return 1
        fi
        sleep 0.2
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f\n", b - a}'
}

# wait_caught_up LIMIT: waits until the oldest unshipped entry is at most 2 s old (the
# store keeps up again, with the load still running; at most LIMIT seconds); prints how
# long it took.
wait_caught_up() {
    local limit=$1 t0 line
    t0=$(date +%s.%N)
    while :; do
        line=$(gauges || true)
        set -- $line
        if [ -n "$line" ] && [ "$6" = 1 ] && awk -v a="$3" 'BEGIN {exit !(a <= 2.0)}'; then break; fi
        if awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN {exit !(b - a > l)}'; then
            echo "not caught up within ${limit} s" >&2
            return 1
        fi
        sleep 0.5
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f\n", b - a}'
}

# store_check BACKEND URL|PATH DURABLE: the store's cursor equals the journal's last
# durable entry, and it holds every entry id 1..DURABLE exactly once.
store_check() {
    local backend=$1 where=$2 durable=$3 got
    local sql="SELECT (SELECT shipped_entry_id FROM gateways), COUNT(*), MIN(e), MAX(e) FROM \
(SELECT entry_id AS e FROM transactions UNION SELECT entry_id FROM declines UNION SELECT entry_id FROM events) x"
    if [ "$backend" = pg ]; then
        got=$(psql_c "$sql" | tr '|' ' ')
    else
        got=$(python3 -c 'import sqlite3, sys; print(*sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone())' "$where" "$sql")
    fi
    set -- $got
    if [ "$1" = "$durable" ] && [ "$2" = "$durable" ] && [ "$3" = 1 ] && [ "$4" = "$durable" ]; then
        echo "store equals journal: cursor $1 = durable $durable, entries 1..$durable each once"
    else
        echo "STORE DIFFERS FROM JOURNAL: durable $durable; store cursor $1, distinct entries $2, min $3, max $4"
        return 1
    fi
}

# load_json FILE: one line from a load test's JSON report.
load_line() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["by_kind"].get("purchase", {}).get("latency_ms", {})
c = (r.get("conservation") or {}).get("verdict", "unchecked")
print(f'{r["throughput_per_s"]:.0f} answers/s over {r["measured_s"]:.0f} s; purchase p50 {p.get("p50", 0):.2f} ms, '
      f'p99 {p.get("p99", 0):.2f} ms, max {p.get("max", 0):.2f} ms; conservation {c}; {"ok" if r["ok"] else "FAILED"}')
PY
}
