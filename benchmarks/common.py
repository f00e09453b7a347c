"""Timing and machine helpers shared by the benchmarks (the machine is shared: record its load)."""
from __future__ import annotations

import os
import platform
import time


def timed(fn, repeats: int):
    """``(last result, [seconds of each call])`` of ``repeats`` calls of ``fn()``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def load_average() -> list[float]:
    """The 1 / 5 / 15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(**extra) -> dict:
    """What a result was measured on: processor, cores, load average now, and ``extra``."""
    return {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_average_at_start": load_average(), **extra}


def pin_to_one_cpu() -> str:
    """Pin this process to one CPU (its lowest allowed); says where, for the results."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to cpu {cpu}"
    return "not pinned (no sched_setaffinity)"


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``, ...) in KiB; -1 where there is none."""
    try:
        for line in open("/proc/self/status").read().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1
