"""Give the heap an operation freed back to the kernel.

ferryd lives for months and runs installs that briefly hold a zstd window, the slot
writer's buffers and a download's worth of small objects. glibc keeps freed memory in
its arenas, so without this every install would start from the previous one's high-water
mark and the daemon's resident size would only ever grow.
"""

from __future__ import annotations

import ctypes
import gc


def release() -> bool:
    """Collect garbage, then ``malloc_trim(0)``; False where the libc has none (musl)."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own libc
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
