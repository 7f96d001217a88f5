#!/usr/bin/env bash
# Doors at the POS peak (docs/PERFORMANCE.md, doors): one release gateway with the demo
# campus (2,000 POS terminals, 500 door controllers in 50 door groups, 20,000 cards),
# driven by cardgate-loadtest, in one session:
#
#   (a) POS alone:       TERMINALS POS terminals purchasing at RATE/s, open loop;
#   (b) POS and doors:   the same, with DOORS door controllers checking at DOOR_RATE/s;
#   (c) a revocation:    as (b), and the door admin revokes one permission (the demo's
#                        staff permission on door group 1) REVOKE_AFTER seconds into the
#                        window: how long until every controller of the group synced the
#                        delta and acknowledged the new cache version;
#   (d) a card lost:     as (b), and one card is reported lost halfway through the window:
#                        every door group's cache drops it, so all DOORS controllers sync a
#                        delta; how long until the last acknowledged.
#
# Every run has a fresh gateway and data directory (balances and daily limits as new),
# one after the other. (a) and (b) alternate ROUNDS times (the table gives medians), so
# that a drift in the machine's load favours neither. Prints the POS p99 both ways, the
# door p99, and the sync times.
#
#   bench/doors.sh
#
# Targets (issue 11): door p99 under 5 ms; POS p99 with the doors no worse than without.
#
# Environment (defaults in brackets): TERMINALS [1000], RATE [20000], DOORS [500],
# DOOR_RATE [2000], DURATION [30] measured seconds per run, RAMP_UP [5], REVOKE_AFTER [5],
# ROUNDS [1], ACCOUNTS [20000], OUT [target/doors], DATA_ROOT [/var/tmp], NO_BUILD,
# SYNC [1] (0: skip (c) and (d), as bench/ab.sh's `doors` mode does),
# PAGE_ENTRIES [512]: the door cache page the controllers ask for (0: four-entry
# DOOR_CACHE_PAGEs, as before DOOR_CACHE_BULK; docs/PROTOCOL.md 6.35).
# DOORS may not exceed the demo's `demo.door_controllers` (500 unless configured).
# GATEWAY [cardgate] or `null`: the null gateway (cardgate-null-gateway: the same
# protocol, every check granted from a cache of every demo card, no ledger), the
# transport's yardstick; it has no operator API, so (c) and (d) are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
TERMINALS=${TERMINALS:-1000}
RATE=${RATE:-20000}
DOORS=${DOORS:-500}
DOOR_RATE=${DOOR_RATE:-2000}
DURATION=${DURATION:-30}
RAMP_UP=${RAMP_UP:-5}
REVOKE_AFTER=${REVOKE_AFTER:-5}
ROUNDS=${ROUNDS:-1}
ACCOUNTS=${ACCOUNTS:-20000}
OUT=${OUT:-target/doors}
DATA_ROOT=${DATA_ROOT:-/var/tmp}
mkdir -p "$OUT"
GATEWAY=${GATEWAY:-cardgate}
# Each checkpoint and central-store batch in the gateway log, for bench/timeline.py.
export RUST_LOG=${RUST_LOG:-info,cardgate_journal=debug,cardgate_central=debug}
case "$GATEWAY" in cardgate|null) ;; *) echo "GATEWAY is cardgate or null" >&2; exit 2 ;; esac
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p cardgate -p cardgate-loadtest
    cargo build --release -q -p cardgate-bench --bin cardgate-null-gateway
fi
gw=target/release/cardgate
lt=target/release/cardgate-loadtest

pid="" dir="" addr="" aaddr="" maddr="" token="" permission=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    [ -z "$dir" ] || rm -rf "$dir"
}
trap cleanup EXIT

# gateway_up NAME: a fresh data directory and demo campus (every run gets its own, so
# that no run finds balances or daily limits spent by the one before); sets pid, dir,
# addr, aaddr, maddr, token and permission.
gateway_up() {
    local log="$OUT/$1.gateway.log"
    # Truncated first: the job below may open it after the first read, which would
    # then see nothing (set -e ends the script) or an earlier run's address.
    : >"$log"
    if [ "$GATEWAY" = null ]; then
        target/release/cardgate-null-gateway --listen 127.0.0.1:0 --demo-accounts "$ACCOUNTS" >"$log" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do
            addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
            [ -n "$addr" ] && return
            sleep 0.1
        done
        echo "the null gateway did not start; see $log" >&2; exit 1
    fi
    dir=$(mktemp -d "$DATA_ROOT/cardgate-doors.XXXXXX")
    "$gw" serve --demo --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --demo-accounts "$ACCOUNTS" \
        --demo-terminals "$(( TERMINALS > 2000 ? TERMINALS : 2000 ))" >"$log" 2>&1 &
    pid=$!
    addr="" aaddr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/.*kind="terminals" addr=\([0-9.:]*\).*/\1/p' "$log")
        aaddr=$(sed -n 's/.*kind="admin" addr=\([0-9.:]*\).*/\1/p' "$log")
        [ -n "$addr" ] && [ -n "$aaddr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$addr" ] && [ -n "$aaddr" ] || { echo "the gateway did not start listening; see $log" >&2; exit 1; }
    maddr=$(sed -n 's/.*kind="metrics" addr=\([0-9.:]*\).*/\1/p' "$log")
    # A director may revoke permissions and report cards lost; the daemon adds it while
    # it runs.
    token=$("$gw" operator add doors-bench --role director --data-dir "$dir" | tail -n 1)
    # The permission (c) revokes: the demo's staff permission on door group 1, else any.
    permission=$(curl -sf -H "Authorization: Bearer $token" "http://$aaddr/api/v1/door-permissions?door_group=1" |
        python3 -c '
import json, sys
ps = json.load(sys.stdin)["permissions"]
staff = [p for p in ps if "staff" in json.dumps(p.get("subject", ""))]
print((staff or ps)[0]["id"])')
}

gateway_down() { # NAME: keeps the gateway's metrics, memory and CPU by thread, stops it, removes its data
    [ -z "$maddr" ] || [ "$GATEWAY" = null ] || curl -s "http://$maddr/metrics" >"$OUT/$1.metrics" || true
    grep -E '^(VmRSS|VmHWM)' /proc/"$pid"/status >>"$OUT/$1.metrics" || true
    # CPU seconds since start, by thread name (start-up's included: the same in every run).
    python3 bench/thread_cpu.py "$pid" >"$OUT/$1.threads" || true
    kill -TERM "$pid"; wait "$pid" || true; pid=""
    [ -z "$dir" ] || rm -rf "$dir"
    dir=""
}

doors=(--doors "$DOORS" --door-rate "$DOOR_RATE" --door-page-entries "${PAGE_ENTRIES:-512}")
run() { # NAME, extra loadtest flags (@ADMIN@ and @PERMISSION@ become this gateway's)...
    local name=$1; shift
    gateway_up "$name"
    local extra=() a
    for a in "$@"; do
        a=${a//@ADMIN@/$aaddr}
        extra+=("${a//@PERMISSION@/$permission}")
    done
    local auth=()
    [ -z "$token" ] || auth=(--admin-token "$token")
    "$lt" --target "$addr" --terminals "$TERMINALS" --rate "$RATE" --accounts "$ACCOUNTS" \
        --duration "$DURATION" --ramp-up "$RAMP_UP" "${auth[@]}" --json "${extra[@]}" \
        >"$OUT/$name.json" 2>"$OUT/$name.loadtest.err" || true
    echo "$permission" >"$OUT/$name.permission"
    gateway_down "$name"
    [ -s "$OUT/$name.json" ] || { echo "$name: no report; see $OUT/$name.loadtest.err" >&2; cat "$OUT/$name.loadtest.err" >&2; }
}

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n) $(nproc) cores $(git rev-parse --short HEAD); gateway=$GATEWAY pos=$TERMINALS@$RATE/s doors=$DOORS@$DOOR_RATE/s duration=${DURATION}s rounds=$ROUNDS"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/summary.txt"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
        run "r$round-pos"; run "r$round-pos_doors" "${doors[@]}"
    else
        run "r$round-pos_doors" "${doors[@]}"; run "r$round-pos"
    fi
done
if [ "$GATEWAY" = cardgate ] && [ "${SYNC:-1}" != 0 ]; then
    run revoke "${doors[@]}" --door-revoke-after "$REVOKE_AFTER" --door-revoke-permission @PERMISSION@ \
        --door-revoke-endpoint "http://@ADMIN@/api/v1/door-permissions/{id}/revoke"
    run lost_card "${doors[@]}" --lost-cards 1 --lost-probe-pct 0 \
        --lost-card-endpoint "http://@ADMIN@/api/v1/cards/{card}/lost"
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
permission=$(cat "$OUT/revoke.permission" 2>/dev/null || echo none)

python3 - "$OUT" "$ROUNDS" "$permission" <<'PY' | tee -a "$OUT/summary.txt"
import json, os, statistics, sys
out, rounds, permission = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def load(name):
    path = f"{out}/{name}.json"
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    j = json.load(open(path))
    if not j["ok"]:
        print(f"warning: {name} reports problems (see {path})", file=sys.stderr)
    return j

def pos_p99(j):
    return j["by_kind"]["purchase"]["latency_ms"]["p99"] if j else float("nan")

def door(j, key="p99"):
    d = (j or {}).get("doors") or {}
    return d.get("latency_ms", {}).get(key, float("nan"))

def med(vals):
    vals = [v for v in vals if v == v]
    return statistics.median(vals) if vals else float("nan")

a = [load(f"r{r}-pos") for r in range(1, rounds + 1)]
b = [load(f"r{r}-pos_doors") for r in range(1, rounds + 1)]
pa, pb = med([pos_p99(j) for j in a]), med([pos_p99(j) for j in b])
db = med([door(j) for j in b])
rate = med([j["doors"]["throughput_per_s"] for j in b if j and j.get("doors")])
print()
print("| run | POS purchase p99 ms | door access p99 ms | door checks/s |")
print("|---|---:|---:|---:|")
print(f"| (a) POS alone | {pa:.2f} | | |")
print(f"| (b) POS and doors | {pb:.2f} | **{db:.2f}** (target < 5) | {rate:,.0f} |")
print(f"| POS p99 with doors / without | **{pb / pa:.2f}** (target <= 1) | | |")
for name, label in (("revoke", f"(c) revoke permission {permission}"), ("lost_card", "(d) a card reported lost")):
    j = load(name)
    if j is None:
        print()
        print(f"{label}: not run")
        continue
    c = (j.get("doors") or {}).get("cache_change") or {}
    acks = c.get("ack_ms", {})
    print()
    print(f"{label}: {c.get('status', 'no report')}; API acknowledged in {c.get('api_ms', 0):.1f} ms; "
          f"{c.get('controllers_acked', 0)} controllers synced and acked the new version, "
          f"p50 {acks.get('p50', float('nan')):.1f} ms, p99 {acks.get('p99', float('nan')):.1f} ms, "
          f"last {acks.get('max', float('nan')):.1f} ms after the change was sent "
          f"({c.get('controllers_behind', 0)} heard of it but did not hold it at the end); "
          f"door p99 {door(j):.2f} ms, POS p99 {pos_p99(j):.2f} ms")
PY
