#!/usr/bin/env python3
"""Instructions per request by part, from bench/callgrind.sh's files.

    callgrind_parts.py LOADTEST_JSON CALLGRIND_FILE...

One callgrind file per thread (--separate-threads=yes). A thread is named by the
function it runs: the SQLite worker (sqlx's connection worker), the committer, the
checkpointer; every other thread (the runtime's workers, sled's I/O threads) is the
sessions', except the flusher task's inclusive instructions, which run on the runtime's
workers and are taken out of them.
"""
import json
import re
import sys
from collections import defaultdict

# Part -> a function only that thread runs (the SQLite library runs on sqlx's worker
# thread alone). First match wins.
THREADS = [
    ("sqlite worker", re.compile(r"^sqlite3VdbeExec$")),
    # `run` may be inlined into the thread's closure: what only its loop calls as well.
    ("committer", re.compile(r"^cardgate_journal::committer::Committer<.*>::(run|hand_off)$")),
    ("checkpointer", re.compile(r"^cardgate_journal::checkpoint::(Checkpointer<.*>::run|checkpoint_pace)$")),
    ("sled threads", re.compile(r"^sled::threadpool::")),
]
# The flusher is a task on the runtime's threads, and reads the journal on the blocking
# pool: each pattern's outermost (largest inclusive) function, on whichever thread.
FLUSHER = [
    re.compile(r"^cardgate_central::flusher::Flusher::run::"),
    re.compile(r"^cardgate_journal::store::Db::read_entries$"),
]
PARTS = ["sqlite worker", "flusher task", "sessions", "committer", "checkpointer", "sled threads"]
# Parts that may have had nothing to do: sled's pool threads, since the journal's own log
# writes run on the committer (ledger/vendor/README.md).
OPTIONAL = {"sled threads"}


def parse(path):
    """(total, {function: inclusive}) of one callgrind file."""
    names = {}
    incl = defaultdict(int)
    total = 0
    fn = None
    in_call = False
    cfn = None

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        key = (kind, m.group(1))
        if m.group(2) is not None:
            names[key] = m.group(2)
        return names.get(key, rest)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    # The inclusive cost of a call; a function calling itself is not
                    # counted twice.
                    if cfn != fn:
                        incl[fn] += cost
                    in_call = False
                else:
                    incl[fn] += cost
                    total += cost
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith("cfn="):
                cfn = name("fn", line[4:])
            elif line.startswith("calls="):
                in_call = True
    return total, incl


def main():
    report = json.load(open(sys.argv[1]))
    requests = sum(k.get("answers", 0) for k in report["by_kind"].values())
    # Door controllers' access checks, warm-up included: instrumentation counts the whole
    # run (a doors-only run, `--terminals 0 --doors N`, answers no POS request).
    doors = report.get("doors") or {}
    requests += doors.get("checks", 0) + doors.get("warmup_checks", 0)
    parts = defaultdict(int)
    for path in sys.argv[2:]:
        total, incl = parse(path)
        if total == 0:
            continue
        part = next((p for p, pat in THREADS if any(pat.search(f) for f in incl)), "sessions")
        if part == "sessions":
            flusher = sum(max((v for f, v in incl.items() if p.search(f)), default=0) for p in FLUSHER)
            parts["flusher task"] += flusher
            total -= flusher
        parts[part] += total
    whole = sum(parts.values())
    print(f"requests answered: {requests:,}")
    print(f"instructions per request: {whole / requests:,.0f}")
    for p in PARTS:
        print(f"  {p:<14} {parts[p] / requests:>9,.0f}")
    # A thread no pattern names is counted as the sessions': say so rather than print a
    # silent zero (an inlined `run` once moved the committer's work there unnoticed).
    missing = [p for p, _ in THREADS if parts[p] == 0 and p not in OPTIONAL]
    if missing:
        print(f"error: no thread matched {', '.join(missing)}; their work is in 'sessions'", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
