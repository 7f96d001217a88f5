#!/usr/bin/env bash
# The gateway side of docs/PERFORMANCE.md section 4: each run starts a fresh release
# gateway with the demo campus in a new data directory, drives it with
# cardgate-loadtest (--json, --check-conservation), and prints one summary row.
#
#   bench/gateway.sh closed TERMINALS...        closed loop (max throughput), e.g. 8 64 256
#   bench/gateway.sh open TERMINALS RATE...     open loop at each RATE (requests/s)
#
# Environment (defaults in brackets):
#   DURATION   [30]     measured seconds per run (after ramp-up)
#   RAMP_UP    [0 below 1,000 terminals, else 5]  seconds over which terminals sign on
#   ACCOUNTS   [20000]  demo accounts (and cards)
#   MIX        [default mix: 2% reversals, 10% balance inquiries]  extra loadtest flags,
#              e.g. MIX="--reversal-pct 0 --balance-pct 0" for purchases only (the
#              PostgreSQL comparison)
#   OUT        [target/lunch]  the loadtest JSON, gateway log and metrics of every run
#   DATA_ROOT  [/var/tmp]  where data directories go (the gateway's disk; not a tmpfs)
#   NO_BUILD   set to skip `cargo build --release`
#   GATEWAY    [cardgate]  or `null`: the null gateway (cardgate-null-gateway: the same
#              protocol, every request answered at once, no ledger, journal or central
#              store), the transport's limit; its runs skip the conservation check (no
#              money moves there) and the gateway's metrics
#   CENTRAL    [central.db in the data directory]  the gateway's --central URL; `{run}`
#              in it becomes the run's data directory name, e.g.
#              CENTRAL='sqlite:///dev/shm/{run}.db' (a tmpfs: what the disk costs)
#   RUST_LOG   [info,cardgate_journal=debug,cardgate_central=debug]  the gateway's log
#              filter; the default logs each checkpoint and central-store batch with its
#              time, which bench/timeline.py lines up with the load test's timeline
#
# Nothing else may use the gateway during a run (conservation reads every balance
# before and after); each run has its own gateway, so nothing else can.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}; shift || true
case "$mode" in closed|open) ;; *) sed -n '2,31p' "$0" >&2; exit 2 ;; esac
[ $# -ge 1 ] || { echo "give the terminal count(s)" >&2; exit 2; }
DURATION=${DURATION:-30}
ACCOUNTS=${ACCOUNTS:-20000}
MIX=${MIX:-}
OUT=${OUT:-target/lunch}
DATA_ROOT=${DATA_ROOT:-/var/tmp}
GATEWAY=${GATEWAY:-cardgate}
export RUST_LOG=${RUST_LOG:-info,cardgate_journal=debug,cardgate_central=debug}
case "$GATEWAY" in cardgate|null) ;; *) echo "GATEWAY is cardgate or null" >&2; exit 2 ;; esac
mkdir -p "$OUT"
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p cardgate -p cardgate-loadtest
    cargo build --release -q -p cardgate-bench --bin cardgate-null-gateway
fi
gw=target/release/cardgate
lt=target/release/cardgate-loadtest
# The gateway and data directory of the run in progress, cleaned up however we exit.
pid="" dir=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    [ -z "$dir" ] || rm -rf "$dir"
}
trap cleanup EXIT

summary() { # json file -> one row
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["by_kind"].get("purchase", {}).get("latency_ms", {})
money = sum(r["by_kind"].get(k, {}).get("answers", 0) for k in ("purchase", "reversal"))
c = r.get("conservation") or {}
print("\t".join(str(x) for x in [
    r["mode"], r["terminals"], r["signed_on"], f'{r["target_rate_per_s"] or 0:.0f}',
    f'{r["throughput_per_s"]:.0f}', f'{money / r["measured_s"]:.0f}',
    f'{p.get("p50", 0):.3f}', f'{p.get("p90", 0):.3f}', f'{p.get("p99", 0):.3f}', f'{p.get("p999", 0):.3f}', f'{p.get("max", 0):.3f}',
    (r.get("generator_lag_ms") or {}).get("p99", ""),
    c.get("verdict", "unchecked"), "ok" if r["ok"] else "FAILED"]))
PY
}

run_one() { # terminals rate(or "") name
    local terminals=$1 rate=$2 name=$3
    local ramp=${RAMP_UP:-$([ "$terminals" -ge 1000 ] && echo 5 || echo 0)}
    local log="$OUT/$name.gateway.log"
    # Truncated first: the job below may open it after the first read, which would
    # then see nothing (set -e ends the script) or an earlier run's address.
    : >"$log"
    if [ "$GATEWAY" = null ]; then
        target/release/cardgate-null-gateway --listen 127.0.0.1:0 >"$log" 2>&1 &
    else
        dir=$(mktemp -d "$DATA_ROOT/cardgate-lunch.XXXXXX")
        local central=()
        [ -z "${CENTRAL:-}" ] || central=(--central "${CENTRAL//\{run\}/$(basename "$dir")}")
        "$gw" serve --demo --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
            --demo-accounts "$ACCOUNTS" --demo-terminals "$(( terminals > 2000 ? terminals : 2000 ))" \
            "${central[@]}" >"$log" 2>&1 &
    fi
    pid=$!
    local addr="" maddr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    maddr=$(sed -n 's/.*kind="metrics" addr=\([0-9.:]*\).*/\1/p' "$log")
    local args=(--target "$addr" --terminals "$terminals" --accounts "$ACCOUNTS" --duration "$DURATION"
                --ramp-up "$ramp" --json)
    [ "$GATEWAY" = null ] || args+=(--check-conservation)
    [ -n "$rate" ] && args+=(--rate "$rate")
    # shellcheck disable=SC2086
    "$lt" "${args[@]}" $MIX >"$OUT/$name.json" 2>"$OUT/$name.loadtest.err" || true
    : >"$OUT/$name.metrics"
    [ -z "$maddr" ] || curl -s "http://$maddr/metrics" >"$OUT/$name.metrics" || true
    grep -E '^(VmRSS|VmHWM)' /proc/"$pid"/status >>"$OUT/$name.metrics" || true
    python3 bench/thread_cpu.py "$pid" >"$OUT/$name.threads" || true
    kill -TERM "$pid"; wait "$pid" || true; pid=""
    [ -z "$dir" ] || rm -rf "$dir"
    dir=""
    if [ -s "$OUT/$name.json" ]; then
        summary "$OUT/$name.json" | tee -a "$OUT/summary.tsv"
    else
        echo "$name: no report; see $OUT/$name.loadtest.err" | tee -a "$OUT/summary.tsv"
        cat "$OUT/$name.loadtest.err" >&2
    fi
}

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores $(git rev-parse --short HEAD); gateway=$GATEWAY duration=${DURATION}s accounts=$ACCOUNTS mix='${MIX:-default}'"
    printf 'mode\tterminals\tsigned_on\trate\tanswers_per_s\tmoney_per_s\tp50_ms\tp90_ms\tp99_ms\tp999_ms\tmax_ms\tsend_lag_p99_ms\tconservation\tresult\n'
} | tee -a "$OUT/summary.tsv"
if [ "$mode" = closed ]; then
    for t in "$@"; do run_one "$t" "" "closed_$t"; done
else
    terminals=$1; shift
    [ $# -ge 1 ] || { echo "give the rate(s)" >&2; exit 2; }
    for r in "$@"; do run_one "$terminals" "$r" "open_${terminals}_$r"; done
fi
