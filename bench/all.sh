#!/usr/bin/env bash
# Every figure of docs/PERFORMANCE.md section 4, in one session, in order. Run it on a
# quiet machine (nothing else using the cores or the disk); it takes ~25 minutes with
# the defaults. Results land in target/perf-<date>/, and bench/tables.py turns them into
# the section's tables.
#
#   bench/all.sh
#
# Environment: DURATION [30] seconds per load run; RATES ["10000 20000 30000"] open-loop
# rates at every fleet size; TARGET_RATE [34000] the 10,000-terminal target run (the
# default mix is 88% purchases, so 34,000 requests/s carry 30,000 purchases/s);
# SKIP_PG, SKIP_CRITERION to leave those out.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
RATES=${RATES:-10000 20000 30000}
TARGET_RATE=${TARGET_RATE:-34000}
root=${ROOT:-target/perf-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$root"
export DURATION NO_BUILD=1
cargo build --release -q -p cardgate -p cardgate-loadtest
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD)"
    echo "cpu: $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "disk: $(df -T /var/tmp | awk 'NR==2 {print $1, $2}')"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$root/machine.txt"

# 4.2: the fleet, closed loop, then open loop at fixed rates.
OUT=$root/fleet bench/gateway.sh closed 1000 5000 10000
for t in 1000 5000 10000; do
    # shellcheck disable=SC2086
    OUT=$root/fleet bench/gateway.sh open "$t" $RATES
done
OUT=$root/fleet bench/gateway.sh open 10000 "$TARGET_RATE"

# 4.3: purchases only, at the baseline's concurrencies.
OUT=$root/versus MIX="--reversal-pct 0 --balance-pct 0" bench/gateway.sh closed 8 64 256
if [ -z "${SKIP_PG:-}" ]; then
    trap 'bench/pg/cluster.sh stop' EXIT
    eval "$(bench/pg/cluster.sh start)"
    OUT=$root/pg SCRIPT=purchase bench/pg/run.sh 8 64 256
    OUT=$root/pg_fn SCRIPT=purchase_fn bench/pg/run.sh 8 64 256
    bench/pg/cluster.sh stop
    trap - EXIT
fi

# 4.4: a million accounts.
OUT=$root/memory bench/memory.sh

# 4.5: microbenchmarks.
if [ -z "${SKIP_CRITERION:-}" ]; then
    cargo bench -p cardgate-bench 2>&1 | tee "$root/criterion.txt"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$root/machine.txt"
python3 bench/tables.py "$root" | tee "$root/tables.md"
