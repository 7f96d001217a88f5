#!/usr/bin/env bash
# Per thread of a running gateway, by thread name (numbered threads such as sled-io-N
# summed): voluntary and involuntary context switches per second and the share of a
# core, over SECONDS s (docs/PERFORMANCE.md 5.4). Run it beside a load, e.g.
#
#   NO_BUILD=1 bench/gateway.sh open 1000 20000 & sleep 20; bench/threads.sh 10
#
# Reads /proc/PID/task/*/status and stat of the first process named `cardgate`, or PID.
set -euo pipefail
seconds=${1:-10}
pid=${2:-$(pgrep -x cardgate | head -1)}
[ -n "$pid" ] || { echo "no cardgate running" >&2; exit 1; }
hz=$(getconf CLK_TCK)
snap() {
    for t in /proc/"$pid"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        vol=$(awk '/^voluntary_ctxt/ {print $2}' "$t/status" 2>/dev/null) || continue
        inv=$(awk '/^nonvoluntary_ctxt/ {print $2}' "$t/status" 2>/dev/null) || continue
        # utime and stime (fields 14 and 15; the name in field 2 has no spaces here).
        ticks=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
        echo "$name $vol $inv $ticks"
    done | awk '{k = $1; sub(/-[0-9]+$/, "", k); v[k] += $2; n[k] += $3; c[k] += $4}
                END {for (k in v) print k, v[k], n[k], c[k]}' | sort
}
a=$(mktemp) b=$(mktemp)
trap 'rm -f "$a" "$b"' EXIT
snap >"$a"; sleep "$seconds"; snap >"$b"
printf '%-18s %10s %10s %7s\n' thread vol/s invol/s core%
join "$a" "$b" | awk -v s="$seconds" -v hz="$hz" \
    '{printf "%-18s %10.0f %10.0f %7.1f\n", $1, ($5 - $2) / s, ($6 - $3) / s, 100 * ($7 - $4) / hz / s}'
