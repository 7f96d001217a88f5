#!/usr/bin/env python3
"""CPU seconds a running process's threads have used since it started, summed by thread
name, most first: `bench/thread_cpu.py PID`. bench/gateway.sh and bench/doors.sh keep it
for each run just before they stop the gateway (RUN.threads), so that a background
thread's whole cost over a run can be compared between builds, where bench/threads.sh
samples 10 s of it."""
import collections
import os
import sys

pid = sys.argv[1]
tick = os.sysconf("SC_CLK_TCK")
cpu = collections.Counter()
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{t}/stat").read()
        name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
    except OSError:
        continue
    # After the ")" that ends the name: state, then utime and stime are fields 12 and 13.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu[name] += (int(fields[11]) + int(fields[12])) / tick
for name, s in cpu.most_common():
    print(f"{s:8.2f} s  {name}")
