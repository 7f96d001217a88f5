#!/usr/bin/env python3
"""Where a run's slow answers were: each 100 ms slot of the load test's timeline is
tagged with what the gateway was doing in it (a central-store batch being shipped, a
checkpoint being written, both, or neither), from the debug lines bench/gateway.sh
has the gateway log. A tail made of stalls shows up as a few tags holding most of the
slow answers; a tail spread thin shows up everywhere.

    bench/timeline.py target/lunch/open_1000_20000     # the run's .json and .gateway.log

Prints, per tag: slots, answers, answers slower than the timeline's threshold (5 ms),
and that as a share of all slow answers and of the tag's own answers; then the
checkpoints (records, ms) and the batches (count, median and slowest ms).
"""
import datetime
import json
import re
import statistics
import sys

EVENT = re.compile(r"(\S+)\s+\w+\s+\S+: (batch shipped|checkpoint written).*?(?:entries|records)=(\d+) micros=(\d+)")


def main(base):
    report = json.load(open(base + ".json"))
    t = report["timeline"]
    start, width = t["start_unix_ms"], t["slot_ms"]
    events = []  # (start ms, end ms, 'b' or 'c', size)
    for line in open(base + ".gateway.log"):
        m = EVENT.match(line)
        if m:
            end = datetime.datetime.fromisoformat(m.group(1)).timestamp() * 1000
            events.append((end - int(m.group(4)) / 1000, end, m.group(2)[0], int(m.group(3))))
    if not events:
        sys.exit("no batch or checkpoint lines in the gateway log: run with "
                 "RUST_LOG=info,cardgate_journal=debug,cardgate_central=debug (bench/gateway.sh's default)")
    tags = {}
    for i, (answers, slow) in enumerate(zip(t["answers"], t["slow"])):
        a, b = start + i * width, start + (i + 1) * width
        tag = "".join(sorted({k for (s, e, k, _) in events if s <= b and a <= e})) or "-"
        row = tags.setdefault(tag, [0, 0, 0])
        row[0] += 1
        row[1] += answers
        row[2] += slow
    total_slow = sum(t["slow"])
    names = {"-": "neither", "b": "batch", "c": "checkpoint", "bc": "both"}
    p = report["by_kind"].get("purchase", {}).get("latency_ms", {})
    print(f"purchase p99 {p.get('p99')} ms; answers slower than {t['slow_ms']} ms: {total_slow} of {sum(t['answers'])}")
    for tag, (slots, answers, slow) in sorted(tags.items()):
        print(f"{names[tag]:<10} slots {slots:5}  answers {answers:8}  slow {slow:7}"
              f"  ({100 * slow / max(total_slow, 1):3.0f} % of slow, {100 * slow / max(answers, 1):5.2f} % of its answers)")
    checkpoints = [(n, round(e - s)) for (s, e, k, n) in events if k == "c"]
    batches = [e - s for (s, e, k, _) in events if k == "b"]
    print("checkpoints (records, ms):", checkpoints)
    if batches:
        print(f"batches: {len(batches)}, median {statistics.median(batches):.1f} ms, slowest {max(batches):.1f} ms")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1].removesuffix(".json"))
