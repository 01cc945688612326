#!/usr/bin/env python3
"""CPU time and context switches of each thread of a process over a window (issue 15).

    benches/thread_costs.py PID SECONDS [MESSAGES]

Samples /proc/PID/task/*/{stat,status} at the start and the end of the window and prints,
per thread name (threads of the same name summed: tokio-rt-worker, sled-io-*), the CPU time
(user + system) and the voluntary and involuntary context switches; with MESSAGES (the
messages the process handled in the window), each per message. Threads that start or end in
the window count from zero or up to their last sample.
"""
import os
import re
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def sample(pid):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        threads[tid] = (name, cpu, vol, invol)
    return threads


def main():
    pid, seconds = int(sys.argv[1]), float(sys.argv[2])
    messages = int(sys.argv[3]) if len(sys.argv) > 3 else None
    before = sample(pid)
    time.sleep(seconds)
    after = sample(pid)
    totals = {}
    for tid, (name, cpu, vol, invol) in after.items():
        _, cpu0, vol0, invol0 = before.get(tid, (name, 0.0, 0, 0))
        group = re.sub(r"-\d+$", "-*", name)
        t = totals.setdefault(group, [0.0, 0, 0])
        t[0] += cpu - cpu0
        t[1] += vol - vol0
        t[2] += invol - invol0
    unit = f" per message ({messages})" if messages else ""
    print(f"{'thread':<20} {'CPU s':>8} {'voluntary':>10} {'involuntary':>12}{unit}")
    whole = [0.0, 0, 0]
    for name, (cpu, vol, invol) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        whole = [whole[0] + cpu, whole[1] + vol, whole[2] + invol]
        if messages:
            print(f"{name:<20} {cpu / messages * 1e6:>7.1f}us {vol / messages:>10.2f} {invol / messages:>12.2f}")
        else:
            print(f"{name:<20} {cpu:>8.2f} {vol:>10} {invol:>12}")
    if messages:
        print(f"{'all':<20} {whole[0] / messages * 1e6:>7.1f}us {whole[1] / messages:>10.2f} {whole[2] / messages:>12.2f}")


if __name__ == "__main__":
    main()
