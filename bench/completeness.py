#!/usr/bin/env python3
"""Compares a load test's sequence numbers with the gateway's completeness report.

    cardgate-loadtest ... --skip-every 50 --offline-pct 10 --offline-sales 100 --json > run.json
    curl -s -H "Authorization: Bearer $T" "$API/reports/completeness?date=$(TZ=Asia/Shanghai date +%F)" > report.json
    bench/completeness.py run.json report.json

For every terminal of the run, the report's `missing` must be exactly the ranges the run
skipped (none without --skip-every), and `matches` true (the central store agrees with
the journal: wait until cardgate_central_backlog_entries is 0 before fetching the
report). A gateway that ran other traffic on the same terminals the same day, or an
earlier run's skips, shows more missing ranges: use a fresh gateway, or `--first-terminal`
beyond the terminals used before. Exits 1 on any difference, naming each.
"""

import json
import sys


def main(run_path, report_path):
    run = json.load(open(run_path))
    report = json.load(open(report_path))
    lines = {t["terminal"]: t for t in report["terminals"]}
    seqs = run["sequences"]["terminals"]
    if not seqs:
        sys.exit("the run lists no sequence numbers: run it with --skip-every or --offline-pct")
    bad = 0
    for s in seqs:
        t = s["terminal"]
        line = lines.get(t)
        if line is None:
            print(f"terminal {t}: not in the report")
            bad += 1
            continue
        want = [list(r) for r in s["skipped"]]
        if line["missing"] != want:
            print(f"terminal {t}: missing {line['missing']}, the run skipped {want}")
            bad += 1
        if line["matches"] is not True:
            print(f"terminal {t}: matches is {line['matches']}: the central store differs or was not asked")
            bad += 1
        if s["first"] is not None and line["seq_max"] != s["last"]:
            print(f"terminal {t}: highest number {line['seq_max']}, the run's last {s['last']}")
            bad += 1
    skipped = sum(len(s["skipped"]) for s in seqs)
    print(f"{len(seqs)} terminals, {skipped} numbers skipped, report {report['date']} ({report['status']}): "
          + ("agrees" if bad == 0 else f"{bad} differences"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
