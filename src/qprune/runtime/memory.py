"""Process memory: hand back to the OS what Python freed, so that measured growth is what a model holds.

return_freed_memory()   # after quantizing while loading, and between benchmark runs
"""

from __future__ import annotations

import ctypes
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
