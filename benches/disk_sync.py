#!/usr/bin/env python3
"""What a durable write costs on this machine's disk (BENCHMARKS.md, issue 6).

Appends small records to a file in DIR (default: /tmp) and times, per record, what the store's
flush does: sled 0.34.7's sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER), then the store's
fdatasync; and, for comparison, fdatasync alone. Prints p50, p90 and p99 of each in microseconds, and the CPU time (user +
system, of this process) per record of each loop: what one durable write costs the CPU.

    python3 benches/disk_sync.py [DIR] [ROUNDS] [RECORD_BYTES]
"""

import ctypes
import os
import resource
import sys
import time

SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def percentiles(samples):
    samples = sorted(samples)
    return (
        samples[len(samples) // 2] * 1e6,
        samples[int(len(samples) * 0.9)] * 1e6,
        samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
    )


def cpu_seconds():
    """User + system time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    record = b"x" * (int(sys.argv[3]) if len(sys.argv) > 3 else 600)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    path = os.path.join(directory, f"disk_sync.{os.getpid()}.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        ranged, after, both, alone = [], [], [], []
        cpu0 = cpu_seconds()
        for _ in range(rounds):
            os.pwrite(fd, record, offset)
            t0 = time.perf_counter()
            flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
            if libc.sync_file_range(fd, offset, len(record), flags) != 0:
                raise OSError(ctypes.get_errno(), "sync_file_range")
            t1 = time.perf_counter()
            os.fdatasync(fd)
            t2 = time.perf_counter()
            ranged.append(t1 - t0)
            after.append(t2 - t1)
            both.append(t2 - t0)
            offset += len(record)
        cpu1 = cpu_seconds()
        for _ in range(rounds):
            os.pwrite(fd, record, offset)
            offset += len(record)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            alone.append(time.perf_counter() - t0)
        cpu2 = cpu_seconds()
    finally:
        os.close(fd)
        os.unlink(path)
    for name, samples in [
        ("sync_file_range", ranged),
        ("fdatasync after it", after),
        ("both (the store's flush)", both),
        ("fdatasync alone", alone),
    ]:
        p50, p90, p99 = percentiles(samples)
        print(f"{name}: p50 {p50:.0f} us, p90 {p90:.0f} us, p99 {p99:.0f} us")
    # CPU per record, the pwrite included (the store writes the record too).
    print(f"CPU per record, pwrite + both: {(cpu1 - cpu0) / rounds * 1e6:.0f} us (user + system)")
    print(f"CPU per record, pwrite + fdatasync alone: {(cpu2 - cpu1) / rounds * 1e6:.0f} us (user + system)")


if __name__ == "__main__":
    main()
