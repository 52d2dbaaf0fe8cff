"""Process measurements for benchmarks, with no JAX or torch import (the PyTorch baseline
process uses them too, so its own start-up time and memory stay its own)."""

from __future__ import annotations

import os
import resource
import sys


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux /proc, 10 ms resolution), else None."""
    try:
        with open('/proc/self/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        with open('/proc/uptime') as f:
            uptime = float(f.read().split()[0])
        elapsed = uptime - int(fields[19]) / os.sysconf('SC_CLK_TCK')  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None
    return elapsed if elapsed >= 0 else None


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark, MiB.

    Linux's VmHWM where there is one: getrusage's ru_maxrss survives exec, so a child
    started by a large parent would report the parent's peak. Else ru_maxrss.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == 'darwin' else rss / 1024  # B on macOS, else KiB


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
