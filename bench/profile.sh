#!/usr/bin/env bash
# Where the time goes under load (docs/PERFORMANCE.md section 4.6): a fresh release
# gateway with the demo campus, an open-loop load test against it, and, in the middle of
# the measured window, `perf record` of the gateway and of the generator plus the
# machine's CPU split from /proc/stat. Prints the load test's latency table, the CPU
# split, each process's share, the gateway's threads and hottest symbols, and the
# group-commit figures from its metrics (bench/metrics.py).
#
#   bench/profile.sh [TERMINALS [RATE]]      defaults: 10000 34000
#
# RATE `closed` runs the load test closed loop (every terminal sends its next request
# when answered: the gateway at its maximum, as bench/vs_null.sh's throughput runs).
#
# Environment: DURATION [20] measured seconds, PERF_S [6] seconds recorded (starting 5 s
# into the measured window), SCHED=1 to record `perf sched` instead of `perf record`
# (scheduling delays; a separate run, since both at once distort each other),
# OUT [target/profile], DATA_ROOT [/var/tmp], NO_BUILD. Needs perf and permission to
# use it (root, or kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-10000}
rate=${2:-34000}
DURATION=${DURATION:-20}
PERF_S=${PERF_S:-6}
OUT=${OUT:-target/profile}
DATA_ROOT=${DATA_ROOT:-/var/tmp}
RAMP_UP=3
mkdir -p "$OUT"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p cardgate -p cardgate-loadtest
dir=$(mktemp -d "$DATA_ROOT/cardgate-profile.XXXXXX")
gw_pid="" lt_pid=""
cleanup() {
    for p in $lt_pid $gw_pid; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

log=$OUT/gateway.log
# Truncated first: the job below may open it after the first read, which would
# then see nothing (set -e ends the script) or an earlier run's address.
: >"$log"
target/release/cardgate serve --demo --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --demo-terminals "$(( terminals > 2000 ? terminals : 2000 ))" >"$log" 2>&1 &
gw_pid=$!
addr=""
for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
    [ -n "$addr" ] && break
    kill -0 "$gw_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
maddr=$(sed -n 's/.*kind="metrics" addr=\([0-9.:]*\).*/\1/p' "$log")

rate_arg=(--rate "$rate")
[ "$rate" = closed ] && rate_arg=()
target/release/cardgate-loadtest --target "$addr" --terminals "$terminals" "${rate_arg[@]}" \
    --ramp-up "$RAMP_UP" --duration "$DURATION" >"$OUT/loadtest.txt" 2>"$OUT/loadtest.err" &
lt_pid=$!
# Sign-on takes the ramp-up and a little more; start 5 s into the measured window.
sleep $(( RAMP_UP + 2 + 5 ))
head -1 /proc/stat >"$OUT/stat.before"
if [ -n "${SCHED:-}" ]; then
    perf sched record -o "$OUT/sched.data" -- sleep "$PERF_S" >/dev/null 2>&1
else
    perf record -F 999 -g -p "$gw_pid" -o "$OUT/gateway.data" -- sleep "$PERF_S" >/dev/null 2>&1 &
    perf_pid=$!
    perf record -F 999 -p "$lt_pid" -o "$OUT/generator.data" -- sleep "$PERF_S" >/dev/null 2>&1
    wait "$perf_pid" || true
fi
head -1 /proc/stat >"$OUT/stat.after"
wait "$lt_pid" || true
lt_pid=""
curl -s "http://$maddr/metrics" >"$OUT/gateway.metrics"
kill -TERM "$gw_pid"; wait "$gw_pid" || true; gw_pid=""

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cores $(git rev-parse --short HEAD); $terminals terminals, $rate requests/s, perf over ${PERF_S} s"
sed -n '/^latency ms/,/^$/p' "$OUT/loadtest.txt"
python3 - "$OUT" "$PERF_S" <<'PY'
import sys
out, secs = sys.argv[1], float(sys.argv[2])
before = [int(x) for x in open(f"{out}/stat.before").read().split()[1:9]]
after = [int(x) for x in open(f"{out}/stat.after").read().split()[1:9]]
names = "user nice system idle iowait irq softirq steal".split()
# /proc/stat counts USER_HZ (100) ticks summed over all cores.
cores = {n: (a - b) / 100 / secs for n, a, b in zip(names, after, before)}
print("machine, cores busy: " + ", ".join(f"{n} {v:.2f}" for n, v in cores.items() if n in ("user", "system", "softirq", "iowait", "idle")))
PY
if [ -n "${SCHED:-}" ]; then
    perf sched latency -i "$OUT/sched.data" --sort max >"$OUT/sched.txt" 2>/dev/null || true
    sed -n '1,12p' "$OUT/sched.txt"
else
    for p in gateway generator; do
        n=$(perf script -i "$OUT/$p.data" -F comm 2>/dev/null | wc -l)
        echo "$p: $n samples at 999 Hz over ${PERF_S} s = $(awk -v n="$n" -v s="$PERF_S" 'BEGIN {printf "%.2f", n / 999 / s}') cores"
    done
    echo "gateway threads (share of its samples):"
    perf report -i "$OUT/gateway.data" --no-children -g none --sort comm -q 2>/dev/null \
        | awk 'NF >= 2 {c[$2 ~ /^sled-io/ ? "sled-io (all)" : $2] += $1} END {for (k in c) printf "  %6.1f%%  %s\n", c[k], k}' \
        | sort -rn
    echo "gateway by object and hottest symbols:"
    perf report -i "$OUT/gateway.data" --no-children -g none --sort dso -q >"$OUT/gateway.dso.txt" 2>/dev/null || true
    perf report -i "$OUT/gateway.data" --no-children -g none --sort sym -q >"$OUT/gateway.sym.txt" 2>/dev/null || true
    head -4 "$OUT/gateway.dso.txt"
    head -12 "$OUT/gateway.sym.txt"
fi
python3 bench/metrics.py "$OUT/gateway.metrics"
