#!/usr/bin/env bash
# Does the central store keep up with the gateway's maximum? (docs/PERFORMANCE.md,
# section 2.) Two phases, each with a fresh gateway (demo campus) and a fresh store:
#
# 1. Keeping up: DURATION s of closed-loop load from 1,000 terminals with the store
#    reachable; the flusher's gauges sampled every second. Prints the oldest unshipped
#    entry's age (max, p99, seconds above 2 s), the backlog's max, how long the store took
#    to catch up after the load, and whether the store then equals the journal.
# 2. Idle drain rate: DRAIN_LOAD_S s of the same load with the store unreachable (SQLite:
#    its directory does not exist yet; PostgreSQL: the server is stopped), then the way
#    is opened and the idle gateway's backlog is timed to zero.
#
#   bench/central_lag.sh pg|sqlite [--competing]
#
# --competing: a process keeps one core busy throughout (as other work on a shared
# server does). Environment: DURATION [120], DRAIN_LOAD_S [20], TERMINALS [1000],
# OUT [target/central-lag], DATA_ROOT [/var/tmp], PGPORT_CENTRAL [5498], NO_BUILD,
# SKIP_DRAIN (phase 1 only). PostgreSQL runs as a private cluster in
# $DATA_ROOT/cardgate-pg-central (removed at the end; KEEP_PG=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${1:-}
case "$BACKEND" in pg|sqlite) ;; *) sed -n '2,20p' "$0" >&2; exit 2 ;; esac
COMPETING=""
[ "${2:-}" = --competing ] && COMPETING=1
DURATION=${DURATION:-120}
DRAIN_LOAD_S=${DRAIN_LOAD_S:-20}
TERMINALS=${TERMINALS:-1000}
OUT=${OUT:-target/central-lag}
run=$BACKEND${COMPETING:+-competing}
mkdir -p "$OUT"
# shellcheck source=bench/central_common.sh
. bench/central_common.sh
trap central_cleanup EXIT
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p cardgate -p cardgate-loadtest

summary=$OUT/$run.summary.txt
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores $(git rev-parse --short HEAD); central=$BACKEND competing=${COMPETING:-no} terminals=$TERMINALS duration=${DURATION}s"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$summary"
[ -z "$COMPETING" ] || competing_start

store_url() { # phase-name -> URL (SQLite: a file of its own)
    if [ "$BACKEND" = pg ]; then echo "$PG_URL"; else echo "sqlite://$sqlite_dir/$1/central.db"; fi
}
sqlite_dir=$(mktemp -d "$DATA_ROOT/cardgate-central-sqlite.XXXXXX")
trap 'central_cleanup; rm -rf "$sqlite_dir"' EXIT

# Phase 1: keeping up.
[ "$BACKEND" = pg ] && pg_init
mkdir -p "$sqlite_dir/keep"
samples=$OUT/$run.keep.samples
: >"$samples"
gateway_start "$(store_url keep)" "$OUT/$run.keep.gateway.log"
sampler_start "$samples" 1
"$LT" --target "$addr" --terminals "$TERMINALS" --duration "$DURATION" --ramp-up 5 --check-conservation --json \
    >"$OUT/$run.keep.json" 2>"$OUT/$run.keep.loadtest.err" || true
drained=$(wait_drained 600)
sampler_stop
durable=$(gauges | awk '{print $5}')
echo "load: $(load_line "$OUT/$run.keep.json")" | tee -a "$summary"
python3 - "$samples" "$drained" <<'PY' | tee -a "$summary"
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) >= 8]
ages = sorted(float(r[2]) for r in rows)
backlog = max((int(r[1]) for r in rows), default=0)
jb = max((int(r[6]) for r in rows), default=0)
rss = max((int(r[7]) for r in rows), default=0)
p99 = ages[min(len(ages) - 1, int(len(ages) * 0.99))] if ages else 0
over = sum(1 for a in ages if a > 2.0)
verdict = "met" if ages and ages[-1] <= 2.0 else "NOT MET"
print(f"oldest unshipped entry, sampled every second ({len(ages)} samples): max {ages[-1] if ages else 0:.2f} s, "
      f"p99 {p99:.2f} s, {over} samples above 2 s -> target (never above 2 s) {verdict}")
print(f"backlog max {backlog} entries; journal on disk max {jb / 2**20:.0f} MiB; gateway RSS max {rss / 1024:.0f} MiB; "
      f"caught up {sys.argv[2]} s after the load ended")
PY
if [ "$BACKEND" = pg ]; then
    store_check pg "" "$durable" | tee -a "$summary"
else
    store_check sqlite "$sqlite_dir/keep/central.db" "$durable" | tee -a "$summary"
fi
gateway_stop

# Phase 2: the idle drain rate.
if [ -z "${SKIP_DRAIN:-}" ]; then
    if [ "$BACKEND" = pg ]; then pg_destroy; pg_init; pg_stop; fi
    samples=$OUT/$run.drain.samples
    : >"$samples"
    gateway_start "$(store_url drain)" "$OUT/$run.drain.gateway.log"
    "$LT" --target "$addr" --terminals "$TERMINALS" --duration "$DRAIN_LOAD_S" --ramp-up 5 --json \
        >"$OUT/$run.drain.json" 2>"$OUT/$run.drain.loadtest.err" || true
    echo "backlog load (store unreachable): $(load_line "$OUT/$run.drain.json")" | tee -a "$summary"
    sampler_start "$samples" 0.2
    sleep 1
    if [ "$BACKEND" = pg ]; then pg_start; else mkdir -p "$sqlite_dir/drain"; fi
    drained=$(wait_drained 900)
    sampler_stop
    durable=$(gauges | awk '{print $5}')
    python3 - "$samples" <<'PY' | tee -a "$summary"
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) >= 8]
rows = [(float(r[0]), int(r[1]), int(r[3])) for r in rows]
# From the last sample before the first entry shipped to the first with nothing left.
start = next(i for i in range(1, len(rows)) if rows[i][2] > rows[0][2]) - 1
end = next((i for i in range(start, len(rows)) if rows[i][1] == 0), len(rows) - 1)
shipped = rows[end][2] - rows[start][2]
took = rows[end][0] - rows[start][0]
print(f"idle drain: backlog {rows[start][1]} entries shipped in {took:.1f} s (sampled every 0.2 s) = "
      f"{shipped / took:.0f} entries/s")
PY
    if [ "$BACKEND" = pg ]; then
        store_check pg "" "$durable" | tee -a "$summary"
    else
        store_check sqlite "$sqlite_dir/drain/central.db" "$durable" | tee -a "$summary"
    fi
    gateway_stop
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$summary"
