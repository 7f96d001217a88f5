#!/usr/bin/env bash
# The gateway's own cost (docs/PERFORMANCE.md, section 5): cardgate and the null gateway
# (cardgate-null-gateway: the same protocol, sign-on and MACs, every request answered at
# once, no ledger, journal or central store) driven by the same cardgate-loadtest in one
# session, alternately, at 1,000 and 10,000 terminals: the closed-loop throughput and
# the open-loop p99 at RATE requests/s of each, and cardgate's as ratios to the null
# gateway's. On a shared machine an absolute figure says little; a ratio to the bare
# transport, measured in the same minutes, says what the gateway itself costs.
#
#   bench/vs_null.sh
#
# Targets (issue 15): cardgate's closed-loop throughput >= 70 % of the null gateway's,
# and its p99 at RATE no more than 2x the null gateway's.
#
# Environment: TERMINALS ["1000 10000"], RATE [20000], DURATION [30] measured seconds per
# run, ROUNDS [1] (each round runs every pair once more; the table gives the median),
# OUT [target/vs-null], NO_BUILD. Everything else as bench/gateway.sh (ACCOUNTS, MIX).
set -euo pipefail
cd "$(dirname "$0")/.."
TERMINALS=${TERMINALS:-1000 10000}
RATE=${RATE:-20000}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-target/vs-null}
export DURATION=${DURATION:-30}
mkdir -p "$OUT"
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p cardgate -p cardgate-loadtest
    cargo build --release -q -p cardgate-bench --bin cardgate-null-gateway
fi
export NO_BUILD=1
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores $(git rev-parse --short HEAD); rate=$RATE duration=${DURATION}s rounds=$ROUNDS"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/summary.txt"
for round in $(seq 1 "$ROUNDS"); do
    for t in $TERMINALS; do
        # The null gateway first in odd rounds, cardgate first in even ones, so that a
        # drift in the machine's load does not favour either.
        order="null cardgate"
        [ $((round % 2)) = 0 ] && order="cardgate null"
        for g in $order; do
            GATEWAY=$g OUT=$OUT/r$round-$g bench/gateway.sh closed "$t" >/dev/null
        done
        for g in $order; do
            GATEWAY=$g OUT=$OUT/r$round-$g bench/gateway.sh open "$t" "$RATE" >/dev/null
        done
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
python3 - "$OUT" "$ROUNDS" "$RATE" "$TERMINALS" <<'PY' | tee -a "$OUT/summary.txt"
import json, os, statistics, sys
out, rounds, rate, fleets = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()

def figure(gateway, name, what):
    vals = []
    for r in range(1, rounds + 1):
        path = f"{out}/r{r}-{gateway}/{name}.json"
        if not os.path.exists(path):
            continue
        j = json.load(open(path))
        if not j["ok"]:
            print(f"warning: {path} reports problems", file=sys.stderr)
        if what == "throughput":
            vals.append(j["throughput_per_s"])
        else:
            vals.append(j["by_kind"]["purchase"]["latency_ms"]["p99"])
    return statistics.median(vals) if vals else float("nan")

print()
print("| terminals | closed loop: cardgate answers/s | null gateway | **ratio** (target >= 0.70) "
      f"| p99 at {rate}/s: cardgate ms | null gateway ms | **ratio** (target <= 2) |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for t in fleets:
    cg, nl = figure("cardgate", f"closed_{t}", "throughput"), figure("null", f"closed_{t}", "throughput")
    cp, np_ = figure("cardgate", f"open_{t}_{rate}", "p99"), figure("null", f"open_{t}_{rate}", "p99")
    print(f"| {int(t):,} | {cg:,.0f} | {nl:,.0f} | **{cg / nl:.2f}** | {cp:.2f} | {np_:.2f} | **{cp / np_:.2f}** |")
PY
