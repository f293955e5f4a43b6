"""Process memory: hand back to the OS what Python freed, so that measured growth is what a model holds;
and how much memory the machine has available.

return_freed_memory()   # after quantizing while loading, and between benchmark runs
available_memory()      # bytes the OS can give without swapping (None where it cannot say)
return_large_frees()    # under a memory limit: big freed buffers go back to the OS at once
"""

from __future__ import annotations

import ctypes
import os
import sys


def return_freed_memory() -> None:
    """Hand memory that Python freed back to the OS (glibc only). Quantizing while loading frees each
    weight's unquantized copy, and glibc keeps such memory for the process: about 0.6 GB after an
    int8 load of a Qwen3-0.6B (benchmarks/quant_table.py)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_frees(threshold: int = 4 * 2**20) -> None:
    """Make glibc map every allocation of `threshold` bytes or more from the OS and unmap it when freed.
    By default glibc raises that threshold as large buffers are freed, after which they come from its
    heap and stay with the process: measuring logits chunk by chunk for 56 candidates grew the resident
    set by 0.9 GB that way (a Qwen3-0.6B head). The price is a page fault per page of each big buffer."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)
        except (OSError, AttributeError):  # not glibc
            pass


def available_memory() -> int | None:
    """Bytes of RAM available to a new allocation without swapping: MemAvailable on Linux (free memory
    plus the page cache that can be reclaimed), else free pages; None where neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
