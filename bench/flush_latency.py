#!/usr/bin/env python3
"""What this machine's disk does to a durable answer, with no gateway at all: one 4 KiB
write and `fdatasync` after another over a file that already has its blocks (as the
journal's group commit does, one per commit), for SECONDS, and the latency percentiles.
Every answer cardgate gives waits for one such flush; the null gateway waits for none,
so a stall here is a stall of every terminal, and a single one in a 30 s run moves the
p99 (docs/PERFORMANCE.md 5.10).

    bench/flush_latency.py [SECONDS] [--background] [--dir DIR]

--background also runs, in a second process, writes like the central store's SQLite
at 20,000 purchases/s (its WAL: ~650 pages and an fsync every 250 ms; its checkpoint:
10,000 scattered pages and an fsync every 10 s), to show what the store's writes do to
the journal's flushes on a shared disk. DIR (default /var/tmp) must be on the disk the
gateway's data directory uses.
"""
import argparse
import multiprocessing
import os
import time

PAGE = 4096
FILE_BYTES = 64 << 20


def background(path, seconds):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    page = b"y" * PAGE
    end = time.time() + seconds
    off = 0
    rounds = 0
    while time.time() < end:
        for _ in range(650):
            os.pwrite(fd, page, off)
            off = (off + PAGE) % (200 << 20)
        os.fsync(fd)
        time.sleep(0.25)
        rounds += 1
        if rounds % 40 == 0:
            for i in range(10_000):
                os.pwrite(fd, page, (i * 7919 * PAGE) % (200 << 20))
            os.fsync(fd)
    os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seconds", nargs="?", type=float, default=60)
    ap.add_argument("--background", action="store_true")
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    path = os.path.join(args.dir, f"flush-latency.{os.getpid()}")
    bg_path = path + ".bg"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # The blocks exist and are on the disk before the clock starts: the journal's
        # log is preallocated the same way, so no flush below has metadata to write.
        os.pwrite(fd, b"\0" * FILE_BYTES, 0)
        os.fsync(fd)
        bg = None
        if args.background:
            bg = multiprocessing.Process(target=background, args=(bg_path, args.seconds + 1))
            bg.start()
        page = b"x" * PAGE
        lat = []
        off = 0
        end = time.time() + args.seconds
        while time.time() < end:
            t = time.perf_counter()
            os.pwrite(fd, page, off)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
            off = (off + PAGE) % FILE_BYTES
        if bg:
            bg.join()
    finally:
        os.close(fd)
        for p in (path, bg_path):
            if os.path.exists(p):
                os.unlink(p)
    lat.sort()
    n = len(lat)

    def ms(q):
        return lat[min(n - 1, int(n * q))] * 1e3

    over = {b: sum(1 for x in lat if x * 1e3 > b) for b in (5, 10, 50, 100)}
    print(f"flushes {n} in {args.seconds:.0f} s{' with background writes' if args.background else ''}: "
          f"p50 {ms(0.5):.2f} p99 {ms(0.99):.2f} p99.9 {ms(0.999):.2f} max {lat[-1] * 1e3:.1f} ms; "
          + ", ".join(f"> {b} ms: {c}" for b, c in over.items()))


if __name__ == "__main__":
    main()
