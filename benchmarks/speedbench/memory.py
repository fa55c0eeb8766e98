"""Peak memory of a worker process: the RSS high-water mark, reset after loading."""

from __future__ import annotations

import ctypes
import gc
import re
import resource
from pathlib import Path


def reset_peak_rss() -> float:
    """Return memory to the OS, reset the RSS high-water mark to the current RSS; return that RSS (MiB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _proc_status_mib("VmRSS") or peak_rss_mib()


def peak_rss_mib() -> float:
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _proc_status_mib(field: str) -> float | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return round(int(found.group(1)) / 1024, 1) if found else None
