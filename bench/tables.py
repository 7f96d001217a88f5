#!/usr/bin/env python3
"""Turns the results of bench/all.sh (a target/perf-* directory) into the markdown
tables of docs/PERFORMANCE.md section 4, ratios included. Usage: bench/tables.py DIR"""
import glob
import json
import os
import re
import sys

import metrics

root = sys.argv[1] if len(sys.argv) > 1 else "."


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def purchase(r):
    return r["by_kind"].get("purchase", {}).get("latency_ms", {})


def money_per_s(r):
    return sum(r["by_kind"].get(k, {}).get("answers", 0) for k in ("purchase", "reversal")) / r["measured_s"]


def verdict(r):
    c = r.get("conservation") or {}
    v = c.get("verdict", "unchecked")
    return v if r["ok"] else f"{v}; FAILED"


print(open(os.path.join(root, "machine.txt")).read() if os.path.exists(os.path.join(root, "machine.txt")) else "")

fleet = sorted(glob.glob(os.path.join(root, "fleet", "closed_*.json")), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
if fleet:
    print("Closed loop (each terminal sends when answered): maximum throughput\n")
    print("| terminals | answers/s | purchases + reversals/s | purchase p50 ms | p99 ms | p99.9 ms | max ms | conservation |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in fleet:
        r = load(p)
        l = purchase(r)
        print(f"| {r['signed_on']:,} | {fmt(r['throughput_per_s'], 0)} | {fmt(money_per_s(r), 0)} | {fmt(l.get('p50'), 2)} | {fmt(l.get('p99'), 2)} | {fmt(l.get('p999'), 2)} | {fmt(l.get('max'), 2)} | {verdict(r)} |")
    print()

opens = glob.glob(os.path.join(root, "fleet", "open_*.json"))
if opens:
    print("Open loop (Poisson arrivals at a fixed rate; latency from when each request was due)\n")
    print("| terminals | target/s | answers/s | purchases + reversals/s | purchase p50 ms | p99 ms | p99.9 ms | max ms | send lag p99 ms | conservation |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = sorted((load(p) for p in opens), key=lambda r: (r["terminals"], r["target_rate_per_s"]))
    for r in rows:
        l = purchase(r)
        lag = (r.get("generator_lag_ms") or {}).get("p99")
        print(f"| {r['signed_on']:,} | {fmt(r['target_rate_per_s'], 0)} | {fmt(r['throughput_per_s'], 0)} | {fmt(money_per_s(r), 0)} | {fmt(l.get('p50'), 2)} | {fmt(l.get('p99'), 2)} | {fmt(l.get('p999'), 2)} | {fmt(l.get('max'), 2)} | {fmt(lag, 2)} | {verdict(r)} |")
    print()

runs = sorted(glob.glob(os.path.join(root, "fleet", "*.metrics")))
if runs:
    print("Group commit, from each run's gateway metrics (bench/metrics.py): decisions per flush, and what a flush cost\n")
    print("| run | flushes | decisions per flush | flush + fdatasync mean ms | fdatasync mean ms | flush p99 ≤ ms | gateway purchase p99 ≤ ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in runs:
        m = metrics.read(path)
        c = metrics.commits(m)
        if c is None:
            continue
        name = os.path.basename(path)[: -len(".metrics")]
        print(f"| {name} | {c['commits']:,} | {c['decisions_per_flush']:.1f} | {c['commit_mean_ms']:.2f} | {c['sync_mean_ms']:.2f} | {c['commit_p99_le_ms']:g} | {fmt(metrics.purchase_p99_le_ms(m), 1)} |")
    print()


def pg_rows(d):
    out = {}
    path = os.path.join(root, d, "summary.tsv")
    if not os.path.exists(path):
        return out
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 9 and f[0].isdigit() and not f[1].startswith("skipped"):
            out[int(f[0])] = dict(tps=float(f[1]), p50=float(f[2]), p99=float(f[4]), p999=float(f[5]), max=float(f[6]))
    return out


pg, pg_fn = pg_rows("pg"), pg_rows("pg_fn")
versus = {}
for p in glob.glob(os.path.join(root, "versus", "closed_*.json")):
    r = load(p)
    versus[r["terminals"]] = r
if versus or pg:
    print("The same purchase: PostgreSQL (one transaction per purchase, synchronous_commit=on, pgbench) vs the gateway (closed loop, purchases only)\n")
    print("| concurrency | PostgreSQL tps | PG p50 ms | PG p99 ms | PG (one function call) tps | p99 ms | gateway purchases/s | gateway p50 ms | p99 ms | throughput ×PG | p99 ÷ gateway |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in sorted(set(pg) | set(versus)):
        a, b, g = pg.get(c), pg_fn.get(c), versus.get(c)
        gl = purchase(g) if g else {}
        gtps = money_per_s(g) if g else None
        ratio_t = gtps / a["tps"] if (a and gtps) else None
        ratio_p = a["p99"] / gl["p99"] if (a and gl.get("p99")) else None
        print(f"| {c} | {fmt(a and a['tps'], 0)} | {fmt(a and a['p50'], 2)} | {fmt(a and a['p99'], 2)} | {fmt(b and b['tps'], 0)} | {fmt(b and b['p99'], 2)} | {fmt(gtps, 0)} | {fmt(gl.get('p50'), 2)} | {fmt(gl.get('p99'), 2)} | {fmt(ratio_t, 1)} | {fmt(ratio_p, 1)} |")
    print()

mem = os.path.join(root, "memory", "summary.txt")
if os.path.exists(mem):
    print("A million accounts and cards (bench/memory.sh)\n")
    print("```")
    print(open(mem).read().rstrip())
    print("```\n")

crit = os.path.join(root, "criterion.txt")
if os.path.exists(crit):
    print("| benchmark | time (median) | throughput |")
    print("|---|---:|---:|")
    name = None
    for line in open(crit):
        m = re.match(r"^(\S+/\S+)\s*(time:.*)?$", line.strip())
        if m and "/" in line and not line.startswith(" "):
            name = m.group(1)
        t = re.search(r"time:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
        if t and name:
            current_time = t.group(1)
        th = re.search(r"thrpt:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
        if th and name:
            print(f"| {name} | {current_time} | {th.group(1)} |")
            name = None
