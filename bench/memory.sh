#!/usr/bin/env bash
# Resident memory and start-up (recovery) time of the gateway with a million accounts
# and cards (docs/PERFORMANCE.md section 4).
#
#   bench/memory.sh
#
# 1. `cardgate serve --demo --demo-accounts $ACCOUNTS` on a fresh data directory; RSS
#    once the campus exists and the first checkpoint has been written (after SETTLE s).
# 2. RSS after LOAD_S seconds of closed-loop load from 1,000 terminals over all cards.
# 3. SIGTERM (a clean shutdown writes a final checkpoint), start again: wall time from
#    exec to the terminal listener, the "recovered ... millis=" line, RSS.
# 4. Load again for LOAD_S s, SIGKILL (no final checkpoint: recovery replays the journal
#    since the last checkpoint), start again: the same figures, and RSS after LOAD_S s
#    more of load (the replayed records are checkpointed by then).
#
# Environment: ACCOUNTS [1000000], TERMINALS [10000], SETTLE [15], LOAD_S [10],
# DATA_ROOT [/var/tmp], OUT [target/memory], NO_BUILD.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS=${ACCOUNTS:-1000000}
TERMINALS=${TERMINALS:-10000}
SETTLE=${SETTLE:-15}
LOAD_S=${LOAD_S:-10}
DATA_ROOT=${DATA_ROOT:-/var/tmp}
OUT=${OUT:-target/memory}
mkdir -p "$OUT"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p cardgate -p cardgate-loadtest
gw=target/release/cardgate
lt=target/release/cardgate-loadtest
dir=$(mktemp -d "$DATA_ROOT/cardgate-memory.XXXXXX")
pid=""
# On any exit: the gateway this script started (if still running), and its directory.
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    rm -rf "$dir"
}
trap cleanup EXIT

start() { # log -> sets pid, addr, up_s
    local log=$1 t0 t1
    t0=$(date +%s.%N)
    # Truncated first: the job below may open it after the first read, which would
    # then see nothing (set -e ends the script) or an earlier run's address.
    : >"$log"
    "$gw" serve --demo --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --demo-accounts "$ACCOUNTS" --demo-terminals "$TERMINALS" >"$log" 2>&1 &
    pid=$!
    addr=""
    for _ in $(seq 1 6000); do
        addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.05
    done
    t1=$(date +%s.%N)
    up_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
}
rss() { awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "rss %.0f MiB (peak %.0f MiB)", r/1024, h/1024}' /proc/"$pid"/status; }
recovered() { sed -n 's/.*recovered \(.*\) data_dir.*/\1/p' "$1" | sed 's/\x1b\[[0-9;]*m//g'; }
load() {
    "$lt" --target "$addr" --terminals 1000 --accounts "$ACCOUNTS" --duration "$LOAD_S" --json >"$OUT/$1.json" 2>/dev/null \
        || echo "  (load run reported problems: $OUT/$1.json)"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'  load: {r[\"throughput_per_s\"]:.0f} answers/s, purchase p99 {r[\"by_kind\"][\"purchase\"][\"latency_ms\"][\"p99\"]} ms')" "$OUT/$1.json"
}
stop_term() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores $(git rev-parse --short HEAD); accounts=$ACCOUNTS terminals=$TERMINALS" | tee "$OUT/summary.txt"
start "$OUT/1-create.log"
echo "create: campus created and listening after ${up_s} s" | tee -a "$OUT/summary.txt"
sleep "$SETTLE"
echo "create: after ${SETTLE} s: $(rss)" | tee -a "$OUT/summary.txt"
load load1 | tee -a "$OUT/summary.txt"
echo "create: after load: $(rss)" | tee -a "$OUT/summary.txt"
stop_term

start "$OUT/2-restart.log"
echo "clean restart: listening after ${up_s} s; recovered $(recovered "$OUT/2-restart.log"); $(rss)" | tee -a "$OUT/summary.txt"
load load2 | tee -a "$OUT/summary.txt"
echo "clean restart: after load: $(rss)" | tee -a "$OUT/summary.txt"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""

start "$OUT/3-after-kill.log"
echo "restart after kill -9: listening after ${up_s} s; recovered $(recovered "$OUT/3-after-kill.log"); $(rss)" | tee -a "$OUT/summary.txt"
# The records replay changed wait for the committer's first checkpoint: load again so
# that it is written, and read the memory after it.
load load3 | tee -a "$OUT/summary.txt"
echo "restart after kill -9: after load: $(rss)" | tee -a "$OUT/summary.txt"
stop_term
