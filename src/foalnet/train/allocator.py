"""CPU runs: keep freed memory in the process instead of handing it back to the kernel.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and unmaps it on ``free``. A training step allocates and frees gigabytes of such blocks
(activations, attention maps, gradients), so every step faults all of them in again. Measured on
this project's 2-core CPU (``benchmarks/train_step.py``, 2-layer WavLM-Large-shaped encoder, batch
16): about 0.9 M page faults and 30-45 % of a step's CPU time spent in the kernel. With mmap off
and a high trim threshold, freed blocks are reused from the heap and, after the first steps, a
step faults nothing. PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same
reason; ``mallopt`` needs nothing installed. Other C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB free at the heap top

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones (glibc); True when in effect.

    Idempotent; affects allocations made after the call, in this process and in processes it
    forks later (DataLoader workers). Peak memory is about the same; the resident size no longer
    shrinks between steps."""
    global _applied
    if _applied is None:
        _applied = _mallopt(M_MMAP_MAX, 0) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _applied


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel now (glibc ``malloc_trim``); True if any.

    Called after one-off work whose scratch memory would otherwise stay resident under training
    (e.g. filling the audio cache in the training process)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc.malloc_trim(0) == 1


def _glibc():
    """The process's C library if it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has a no-op mallopt)
        return libc
    except (OSError, AttributeError):
        return None


def _mallopt(option: int, value: int) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc.mallopt(option, value) == 1
