#!/usr/bin/env bash
# Two builds of the gateway alternated run by run, so that a drift in the machine's load
# favours neither (docs/PERFORMANCE.md 5.7): each round runs A, then B, each as
# `NO_BUILD=1 bench/gateway.sh MODE ARGS...` with the build copied over
# target/release/cardgate, `bench/threads.sh 10` sampling the gateway's threads from the
# run's THREADS_AFTER-th second, then `bench/metrics.py` on the run's metrics dump.
#
#   bench/ab.sh BUILD_A BUILD_B MODE ARGS...      e.g.
#   cp target/release/cardgate /tmp/before; (change, build); cp target/release/cardgate /tmp/after
#   bench/ab.sh /tmp/before /tmp/after open 1000 20000
#
# A build may be a script that execs a binary, to compare settings (e.g. a
# CARDGATE_CONFIG file). target/release/cardgate is put back as it was at the end.
# MODE `doors` runs `bench/doors.sh` (POS alone, then POS and doors; SYNC=0) per side
# instead, without the sample; its other settings (RATE, DOOR_RATE, ...) come from the
# environment. Every run also keeps its CPU by thread over the whole run (RUN.threads).
# Per run: OUT/a-ROUND and OUT/b-ROUND hold bench/gateway.sh's files and threads.txt;
# `bench/timeline.py OUT/a-1/open_1000_20000` tags its slow answers.
#
# Each run also prints the disk's write and flush requests per group commit, from the
# block device's counters (/sys/class/block/DEV/stat) around the run, campus creation
# included; anything else writing to that disk meanwhile counts too.
#
# Environment: ROUNDS [2], OUT [target/ab], THREADS_AFTER [20]; the rest as
# bench/gateway.sh (ACCOUNTS, DURATION, MIX, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
a=$1 b=$2; shift 2
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-target/ab}
THREADS_AFTER=${THREADS_AFTER:-20}
gw=target/release/cardgate
# The disk under the runs' data directories (bench/gateway.sh's DATA_ROOT).
dev=$(basename "$(df --output=source "${DATA_ROOT:-/var/tmp}" | tail -1)")
devstat=/sys/class/block/$dev/stat
saved=$(mktemp)
cp "$gw" "$saved"
trap 'cp "$saved" "$gw"; rm -f "$saved"' EXIT
for r in $(seq 1 "$ROUNDS"); do
    for side in a b; do
        build=$a; [ "$side" = b ] && build=$b
        out="$OUT/$side-$r"
        mkdir -p "$out"
        cp "$build" "$gw"
        if [ "$1" = doors ]; then
            NO_BUILD=1 OUT="$out" ROUNDS=1 SYNC=0 bench/doors.sh >"$out/stdout" 2>&1 || true
            echo "== $side ($build), round $r"
            grep '^| (' "$out/summary.txt" || tail -5 "$out/stdout"
            python3 bench/metrics.py "$out"/*.metrics
            head -6 "$out"/r1-pos_doors.threads || true
            continue
        fi
        [ -r "$devstat" ] && cp "$devstat" "$out/disk.before"
        NO_BUILD=1 OUT="$out" bench/gateway.sh "$@" >"$out/stdout" 2>&1 &
        run=$!
        sleep "$THREADS_AFTER"
        bench/threads.sh 10 >"$out/threads.txt" 2>&1 || true
        wait "$run"
        [ -r "$devstat" ] && cp "$devstat" "$out/disk.after"
        echo "== $side ($build), round $r"
        tail -1 "$out/summary.tsv"
        python3 bench/metrics.py "$out"/*.metrics
        if [ -r "$out/disk.before" ]; then
            # Fields 5 and 16 of the block device's stat: write and flush requests completed.
            commits=$(grep -h '^cardgate_journal_commits_total ' "$out"/*.metrics | awk '{s += $2} END {print s + 0}')
            paste "$out/disk.before" "$out/disk.after" | awk -v c="$commits" -v dev="$dev" '{
                n = NF / 2; w = $(n + 5) - $5; f = $(n + 16) - $16
                if (c > 0) printf "disk %s: %d writes, %d flushes, %d commits: %.2f writes and %.2f flushes per commit\n", dev, w, f, c, w / c, f / c }'
        fi
        echo "whole run, CPU by thread:"; head -5 "$out"/*.threads || true
        echo "sampled from second $THREADS_AFTER for 10 s:"
        sort -k4 -n -r "$out/threads.txt" | grep -v '^thread ' | head -8 || true
    done
done
