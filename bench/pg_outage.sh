#!/usr/bin/env bash
# A PostgreSQL outage under load (docs/PERFORMANCE.md, section 2): the central store is
# stopped for OUTAGE_S while terminals keep buying, then started again. Prints the
# gateway's latency before, during and after the outage (three back-to-back open-loop
# runs of cardgate-loadtest), the backlog and the oldest unshipped entry over time, the
# journal's size on disk and the gateway's resident memory at the backlog's peak, the
# drain time after the store is back, and whether the store then equals the journal.
#
#   bench/pg_outage.sh
#
# Environment: OUTAGE_S [600], RATE [20000] requests/s, TERMINALS [1000], BEFORE_S [30],
# AFTER_S [120] (the load goes on while the backlog drains), OUT [target/pg-outage],
# DATA_ROOT [/var/tmp], PGPORT_CENTRAL [5498], NO_BUILD. PostgreSQL runs as a private
# cluster in $DATA_ROOT/cardgate-pg-central, removed at the end (KEEP_PG=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTAGE_S=${OUTAGE_S:-600}
RATE=${RATE:-20000}
TERMINALS=${TERMINALS:-1000}
BEFORE_S=${BEFORE_S:-30}
AFTER_S=${AFTER_S:-120}
OUT=${OUT:-target/pg-outage}
BACKEND=pg
mkdir -p "$OUT"
# shellcheck source=bench/central_common.sh
. bench/central_common.sh
trap central_cleanup EXIT
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p cardgate -p cardgate-loadtest

summary=$OUT/summary.txt
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores $(git rev-parse --short HEAD); outage ${OUTAGE_S}s under $RATE requests/s from $TERMINALS terminals" | tee "$summary"
pg_init
samples=$OUT/samples
: >"$samples"
gateway_start "$PG_URL" "$OUT/gateway.log"
sampler_start "$samples" 1

load() { # name seconds
    "$LT" --target "$addr" --terminals "$TERMINALS" --rate "$RATE" --duration "$2" --ramp-up 5 --json \
        >"$OUT/$1.json" 2>"$OUT/$1.loadtest.err" || true
    echo "$1: $(load_line "$OUT/$1.json")" | tee -a "$summary"
}
mark() { echo "$(date +%s.%N) $1" >>"$OUT/marks"; }
: >"$OUT/marks"

load before "$BEFORE_S"
pg_stop
mark down
load during "$OUTAGE_S"
pg_start
mark up
# The load goes on while the backlog drains; the drain is timed from the store's return.
load after "$AFTER_S" &
load_pid=$!
drained=$(wait_caught_up 3600)
wait "$load_pid" || true
# What the last run added.
wait_drained 600 >/dev/null
sampler_stop
durable=$(gauges | awk '{print $5}')
python3 - "$samples" "$OUT/marks" "$drained" <<'PY' | tee -a "$summary"
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) >= 8]
marks = {name: float(t) for t, name in (l.split() for l in open(sys.argv[2]))}
def during(a, b):
    return [r for r in rows if a <= float(r[0]) <= b]
out = during(marks["down"], marks["up"])
peak = max(out, key=lambda r: int(r[1]))
print(f"during the outage: backlog up to {int(peak[1])} entries, oldest unshipped {float(peak[2]):.0f} s, "
      f"journal {int(peak[6]) / 2**20:.0f} MiB on disk, gateway RSS {int(peak[7]) / 1024:.0f} MiB "
      f"(max RSS during the outage {max(int(r[7]) for r in out) / 1024:.0f} MiB)")
print(f"after the store came back: caught up (oldest unshipped at most 2 s) in {sys.argv[3]} s, the load still running")
PY
store_check pg "" "$durable" | tee -a "$summary"
gateway_stop
