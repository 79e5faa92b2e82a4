"""What /proc says of the processes a benchmark runs (bench.py and idle.py):
their CPU time, their memory, their children; and a pin to one CPU."""

import os

TICK = os.sysconf("SC_CLK_TCK")


def pinned(cpu):
    """A preexec_fn that pins the child (and the threads it starts)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cpu_seconds(pids):
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / TICK


def rss_kb(pids):
    """The resident memory of these processes together, kB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
