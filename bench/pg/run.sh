#!/usr/bin/env bash
# The PostgreSQL baseline: a POS purchase as one PostgreSQL transaction with
# synchronous_commit=on, driven by pgbench at 8, 64 and 256 clients (or the counts
# given as arguments), on the same machine as the gateway's figures.
#
#   bench/pg/run.sh [CLIENTS...]
#
# Environment (defaults in brackets):
#   PGURL      [postgres://postgres@127.0.0.1:5432/test]  the server; only the schema
#              cardgate_bench is touched (dropped and recreated).
#   ACCOUNTS   [20000]  accounts and cards, as `cardgate serve --demo` (--demo-accounts)
#   TERMINALS  [2000]   terminal ids recorded with each transaction
#   DURATION   [30]     seconds per client count
#   SCRIPT     [purchase]  purchase (statements as an application sends them) or
#              purchase_fn (one PL/pgSQL call: PostgreSQL at its best)
#   OUT        [target/pg-baseline]  pgbench output, per-transaction logs, summary.tsv
#
# 256 clients need max_connections above 256; `bench/pg/cluster.sh start` runs a
# private cluster with 300 (and the machine's defaults otherwise) and prints its PGURL.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/test}
ACCOUNTS=${ACCOUNTS:-20000}
TERMINALS=${TERMINALS:-2000}
DURATION=${DURATION:-30}
SCRIPT=${SCRIPT:-purchase}
OUT=${OUT:-$here/../../target/pg-baseline}
if [ $# -gt 0 ]; then CLIENTS=("$@"); else CLIENTS=(8 64 256); fi
# pgbench's own threads: one per core, as the load test uses.
JOBS=${JOBS:-$(nproc)}

script_file="$here/$SCRIPT.pgbench"
[ -f "$script_file" ] || { echo "no such script: $script_file" >&2; exit 2; }
mkdir -p "$OUT"
psql_q() { psql "$PGURL" -qAtX -v ON_ERROR_STOP=1 "$@"; }

setting() { psql_q -c "SHOW $1"; }
sync=$(setting synchronous_commit); fsync=$(setting fsync)
if [ "$sync" != on ] || [ "$fsync" != on ]; then
    echo "refusing: synchronous_commit=$sync fsync=$fsync; the baseline must be durable (both on)" >&2
    exit 1
fi
max_conn=$(setting max_connections)
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores; $(psql_q -c 'SELECT version()')"
    echo "# synchronous_commit=$sync fsync=$fsync wal_sync_method=$(setting wal_sync_method)" \
         "shared_buffers=$(setting shared_buffers) max_connections=$max_conn"
    echo "# script=$SCRIPT accounts=$ACCOUNTS duration=${DURATION}s jobs=$JOBS"
} | tee "$OUT/summary.tsv"
printf 'clients\ttps\tp50_ms\tp90_ms\tp99_ms\tp999_ms\tmax_ms\ttransactions\tfailed\n' | tee -a "$OUT/summary.tsv"

psql_q -f "$here/schema.sql" >/dev/null
for c in "${CLIENTS[@]}"; do
    in_use=$(psql_q -c "SELECT count(*) FROM pg_stat_activity")
    if [ $((c + in_use + 3)) -gt "$max_conn" ]; then
        printf '%s\tskipped: max_connections=%s with %s in use (bench/pg/cluster.sh start gives 300)\n' \
            "$c" "$max_conn" "$in_use" | tee -a "$OUT/summary.tsv"
        continue
    fi
    # A fresh campus for every client count, so that no run starts with spent limits.
    psql_q -v accounts="$ACCOUNTS" -f "$here/seed.sql" >/dev/null
    rm -f "$OUT"/log_"$c".*
    pgbench "$PGURL" -n -M prepared -c "$c" -j "$((c < JOBS ? c : JOBS))" -T "$DURATION" \
        -D accounts="$ACCOUNTS" -D terminals="$TERMINALS" -f "$script_file" \
        -l --log-prefix="$OUT/log_$c" >"$OUT/pgbench_$c.txt" 2>&1 || {
        echo "pgbench failed at $c clients:" >&2; tail -20 "$OUT/pgbench_$c.txt" >&2; exit 1; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUT/pgbench_$c.txt" | tail -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$OUT/pgbench_$c.txt")
    # Column 3 of pgbench's per-transaction log is its latency in microseconds.
    cat "$OUT"/log_"$c".* | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk -v c="$c" -v tps="$tps" -v failed="${failed:-0}" '
        { v[NR] = $1 }
        function q(p,   i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; return v[i] / 1000 }
        END { printf "%s\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%s\n", c, tps, q(0.50), q(0.90), q(0.99), q(0.999), v[NR] / 1000, NR, failed }' \
        | tee -a "$OUT/summary.tsv"
    rm -f "$OUT"/log_"$c".*
done
approved=$(psql_q -c "SELECT count(*) FILTER (WHERE approved) || ' approved, ' || count(*) FILTER (WHERE NOT approved) || ' declined' FROM cardgate_bench.transactions")
echo "# last run: $approved" | tee -a "$OUT/summary.tsv"
