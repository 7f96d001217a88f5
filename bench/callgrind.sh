#!/usr/bin/env bash
# The gateway's own cost in instructions per request (docs/PERFORMANCE.md section 5.2):
# a release gateway with the demo campus, under callgrind with instrumentation switched
# on once it listens, a closed-loop load of REQUESTS from TERMINALS, the central store
# SQLite in the gateway's process shipping throughout. Instruction counts are repeatable
# on a busy machine where times are not, so this is how a change to the gateway's cost
# is measured and proven.
#
#   bench/callgrind.sh [REQUESTS [TERMINALS]]      defaults: 30000 200
#
# Prints instructions per answered request, in total and by part: the SQLite worker
# thread, the flusher task, the committer thread, the checkpointer thread, and the
# sessions (everything else on the runtime's threads: codec, MACs, ledger, TCP; sled's
# own I/O threads are counted with them). The callgrind files stay in OUT for
# `callgrind_annotate --inclusive=yes OUT/callgrind.out.*`.
#
# Environment: OUT [target/callgrind], DATA_ROOT [/var/tmp], NO_BUILD, SETTLE [5]
# seconds after the load for the flusher to ship the last batch before the counts are
# dumped.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-30000}
terminals=${2:-200}
OUT=${OUT:-target/callgrind}
DATA_ROOT=${DATA_ROOT:-/var/tmp}
SETTLE=${SETTLE:-5}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p cardgate -p cardgate-loadtest
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.*
dir=$(mktemp -d "$DATA_ROOT/cardgate-callgrind.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    rm -rf "$dir"
}
trap cleanup EXIT

gw=target/release/cardgate
args=(serve --demo --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
      --demo-terminals "$(( terminals > 2000 ? terminals : 2000 ))")
wait_listen() { # log -> prints the terminals' address
    local log=$1 addr=""
    for _ in $(seq 1 3000); do
        addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
        [ -n "$addr" ] && { echo "$addr"; return; }
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "the gateway did not listen" >&2
    exit 1
}

# The campus is created natively first: under valgrind that alone would take minutes,
# and it is not what is measured.
log=$OUT/create.log
: >"$log"
"$gw" "${args[@]}" >"$log" 2>&1 &
pid=$!
wait_listen "$log" >/dev/null
kill -TERM "$pid"; wait "$pid" || true; pid=""

log=$OUT/gateway.log
: >"$log"
valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
    --callgrind-out-file="$OUT/callgrind.out.%p" "$gw" "${args[@]}" >"$log" 2>&1 &
pid=$!
addr=$(wait_listen "$log")
callgrind_control -i on "$pid" >/dev/null 2>&1
target/release/cardgate-loadtest --target "$addr" --terminals "$terminals" --requests "$requests" --json \
    >"$OUT/loadtest.json" 2>"$OUT/loadtest.err"
sleep "$SETTLE"
callgrind_control -d "$pid" >/dev/null 2>&1
callgrind_control -i off "$pid" >/dev/null 2>&1
kill -TERM "$pid"; wait "$pid" || true; pid=""

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' || echo +changes); $requests requests from $terminals terminals, closed loop"
# The dump taken above: one file per thread, callgrind.out.PID.1-NN (the files without
# ".1" are what the exit dumps after it, shutdown included).
python3 bench/callgrind_parts.py "$OUT/loadtest.json" "$OUT"/callgrind.out.*.1-*
