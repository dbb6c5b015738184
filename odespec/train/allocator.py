"""Keep freed memory in the process during training (glibc's malloc only).

A training iteration allocates and frees the same large activations every time (the latent
ODE: tens of MB per iteration in blocks of 1 to 8 MB). glibc's defaults hand such memory back to
the kernel (blocks above the mmap threshold are unmapped; free space above the trim threshold at
the top of the heap is trimmed), so the next iteration faults every page in again and the kernel
zeroes it: 11 % of the latent ODE's iteration time here (``benchmarks/train_speed.py``).
Raising both thresholds keeps the memory for reuse; the resident size then stays at the peak
the iterations reach anyway.

``odespec train`` calls :func:`keep_freed_memory` at start-up: the process is odespec's own. The
library's :func:`odespec.train.loop.train` does not, as malloc's settings belong to whoever owns
the process.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MiB come from the heap and are reused
_TRIM_THRESHOLD = 1 << 30  # the heap's top is returned to the kernel only beyond 1 GiB free


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True where that was done.

    Nothing is changed off Linux, with another C library, or where the user set
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (their choice wins).
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt does nothing
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
