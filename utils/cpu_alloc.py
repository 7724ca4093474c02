"""CPU process settings torch cannot make for itself: OpenMP's idle policy and glibc's malloc thresholds.
This module imports no torch on purpose: passive_omp_waits() must run before torch loads.

keep_freed_memory() keeps freed activation memory in the process instead of handing it back to the
kernel (glibc only).

PyTorch's CPU tensors come from malloc. glibc serves blocks above a (self-adjusting) threshold with
mmap and returns them to the kernel on free, and trims the heap top when it frees much; every new
step then page-faults its activations back in, each fault zero-filling 4 KiB. Training yolov5n at
320 with batch 16 takes 6k-25k such faults per step (~5-10% of the step on this 2-core machine).
With blocks up to 32 MiB (glibc's largest allowed mmap threshold) served from the heap and no trim,
the second step on reuses the first step's pages. Peak RSS does not grow: the same peak is reached
either way, it is just not given back between steps. jemalloc/tcmalloc via LD_PRELOAD do the same
for all sizes; this needs no launcher.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc; larger values are refused
TRIM_THRESHOLD = 1 << 30


def passive_omp_waits() -> None:
    """Idle OpenMP threads sleep instead of spinning. On a shared CPU the spinning threads of busy processes
    slow each other down several-fold (measured 10x on 2 cores). The OpenMP runtime reads the variable once,
    when torch's libraries load, so the CLIs (train.py, val.py, detect.py) call this at the top, before their
    first `import torch`; set later it does nothing. An explicit OMP_WAIT_POLICY in the environment wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_memory(large: bool = False) -> bool:
    """Set the two mallopt parameters; False (and no change) off glibc or when glibc refuses.

    large=True also serves blocks above 32 MiB from the heap (M_MMAP_MAX 0: glibc never mmaps). Inference at
    640 with batch 32 frees and re-allocates activations of 40-160 MiB every batch; each came back as fresh
    zero-filled pages (val.py spent a quarter of its CPU time in the kernel). The cost is heap fragmentation:
    val.py's peak RSS grew ~20% (2.6 -> 3.2 GB at 640, batch 32) in exchange for ~20% less CPU time."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname; find_library would fork ldconfig
    except OSError:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return ok and (not large or bool(libc.mallopt(M_MMAP_MAX, 0)))
