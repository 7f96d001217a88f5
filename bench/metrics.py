#!/usr/bin/env python3
"""Group-commit and latency figures from a dump of the gateway's Prometheus metrics
(bench/gateway.sh saves one per run as NAME.metrics; bench/profile.sh saves one too).
Usage: bench/metrics.py FILE...  One line per file.

Decisions per flush is cardgate_journal_batch_submissions_sum / _count; "p99 ≤" is the
upper bound of the histogram bucket the 99th percentile falls in (the gateway exports
buckets, not exact percentiles). "over 25/50/100 ms" counts the flush + fdatasync calls
(cardgate_journal_sync_seconds) slower than each bound.

cardgate_request_seconds is labelled {kind, result} since the observability work
(result: approved, declined, error, ok); dumps from before it have {kind} only. Both
are read by summing over every label but the ones asked for."""
import re
import sys

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def read(path):
    """Metric name with labels -> value, for the gateway's own (cardgate_*) series."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            # The process collector's CPU time too: CPU per answer (cpu_per_answer).
            if not line.startswith(("cardgate", "process_cpu_seconds_total")):
                continue
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def series(m, name, **want):
    """(labels, value) of every series of `name` whose labels include `want`."""
    for key, v in m.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        labels = dict(LABEL.findall(rest))
        if all(labels.get(k) == w for k, w in want.items()):
            yield labels, v


def total(m, name, **want):
    """The sum of `name` over every series matching `want` (0 when none)."""
    return sum(v for _, v in series(m, name, **want))


def bucket_p99(m, name, count, **want):
    """Upper bound (seconds) of the bucket holding the 99th percentile of histogram
    `name`, summed over the series matching `want`."""
    buckets = {}
    for labels, v in series(m, name + "_bucket", **want):
        le = labels["le"]
        le = float("inf") if le == "+Inf" else float(le)
        buckets[le] = buckets.get(le, 0) + v
    for le, v in sorted(buckets.items()):
        if count and v >= 0.99 * count:
            return le
    return None


def commits(m):
    """The journal's group commits: how many, decisions per flush, mean times, p99 bucket."""
    n = m.get("cardgate_journal_batch_submissions_count", 0)
    if not n:
        return None
    return {
        "commits": int(n),
        "decisions_per_flush": m["cardgate_journal_batch_submissions_sum"] / n,
        "commit_mean_ms": 1000 * m["cardgate_journal_commit_seconds_sum"] / n,
        "sync_mean_ms": 1000 * m["cardgate_journal_sync_seconds_sum"] / n,
        "commit_p99_le_ms": 1000 * bucket_p99(m, "cardgate_journal_commit_seconds", n),
    }


def over(m, name, seconds):
    """How many observations of histogram `name` exceeded `seconds`, which must be one
    of its bucket bounds (None when it is not)."""
    count = total(m, name + "_count")
    for labels, v in series(m, name + "_bucket"):
        if labels["le"] != "+Inf" and float(labels["le"]) == seconds:
            return int(count - v)
    return None


def slow_syncs_text(m):
    """The journal's flush + fdatasync calls over 25, 50 and 100 ms: the disk's stalls
    that every answer in the commit, and every one queued behind it, waits out."""
    counts = [over(m, "cardgate_journal_sync_seconds", s) for s in (0.025, 0.05, 0.1)]
    return "/".join("?" if c is None else str(c) for c in counts)


def cpu_per_answer_us(m):
    """The gateway process's CPU time over every request it answered, in microseconds,
    over the whole life of the process (the demo campus's creation included; it is the
    same in every run of bench/gateway.sh and bench/doors.sh). None without either."""
    cpu = m.get("process_cpu_seconds_total")
    answers = total(m, "cardgate_request_seconds_count")
    if cpu is None or not answers:
        return None
    return 1e6 * cpu / answers


def cpu_us_text(m):
    us = cpu_per_answer_us(m)
    return "?" if us is None else f"{us:.2f}"


def p99_le_ms(m, kind):
    """The gateway's own latency for one kind of request (frame decoded -> answer
    written), p99 bucket; None when the run had none of that kind."""
    n = total(m, "cardgate_request_seconds_count", kind=kind)
    le = bucket_p99(m, "cardgate_request_seconds", n, kind=kind)
    return None if le is None else 1000 * le


def purchase_p99_le_ms(m):
    return p99_le_ms(m, "purchase")


def p99_text(m):
    """The p99 buckets of the kinds a run had: purchases, door checks or both (a run of
    door controllers alone has no purchases)."""
    parts = [f"{name} p99 <= {le:g} ms" for name, kind in (("purchase", "purchase"), ("door check", "access_check"))
             if (le := p99_le_ms(m, kind)) is not None]
    return "; ".join(f"gateway {p}" for p in parts) or "no purchases or door checks"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        m = read(path)
        c = commits(m)
        if c is None:
            print(f"{path}: no commits")
            continue
        print(f"{path}: {c['commits']} flushes, {c['decisions_per_flush']:.1f} decisions per flush, "
              f"flush + fdatasync mean {c['commit_mean_ms']:.2f} ms (fdatasync {c['sync_mean_ms']:.2f} ms), "
              f"p99 <= {c['commit_p99_le_ms']:g} ms, over 25/50/100 ms {slow_syncs_text(m)}; "
              f"{p99_text(m)}; "
              f"CPU {m.get('process_cpu_seconds_total', 0):g} s, {cpu_us_text(m)} us per answer")
