"""CPU runs: keep freed memory in the process, and back large tensors with huge pages.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and unmaps it on ``free``. A training step allocates and frees gigabytes of such blocks
(activations, attention maps, gradients), so every step faults all of them in again. Measured on
this project's 2-core CPU (``benchmarks/train_step.py``, 2-layer WavLM-Large-shaped encoder, batch
16): about 0.9 M page faults and 30-45 % of a step's CPU time spent in the kernel. With mmap off
and a high trim threshold, freed blocks are reused from the heap and, after the first steps, a
step faults nothing. PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same
reason; ``mallopt`` needs nothing installed. Other C libraries are left alone.

Reused heap memory fragments: blocks of a step's many sizes leave holes the next step's sizes do
not fit, and the heap grows past what is ever live at once (measured with ``mallinfo2`` on the
same benchmark: 2.5 GiB live at most, a 3.4-3.7 GiB heap after a few steps). PyTorch's own
switch ``THP_MEM_ALLOC_ENABLE`` (>= 2.2) aligns tensors of 2 MiB or more to pages and asks the
kernel for transparent huge pages on them; on the same benchmark that kept the peak resident
size at 3.2 GiB instead of 4.1 and took 8 % less time per step (fewer TLB misses).
``cpu_memory_settings`` applies both.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
from pathlib import Path

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB free at the heap top
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch's CPU allocator (c10/core/alloc_cpu.cpp)
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones (glibc); True when in effect.

    Idempotent; affects allocations made after the call, in this process and in processes it
    forks later (DataLoader workers). The resident size no longer shrinks between steps, and
    without ``huge_pages_for_tensors`` the heap fragments (module note)."""
    global _applied
    if _applied is None:
        _applied = _mallopt(M_MMAP_MAX, 0) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _applied


def huge_pages_for_tensors() -> bool:
    """Ask PyTorch to back CPU tensors of 2 MiB or more with transparent huge pages.

    PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, so this takes
    effect only when called before the process's first tensor (``train_fold`` calls it first
    thing). A value already in the environment is the user's choice and is kept (``0`` opts
    out). True when requested and the kernel hands out huge pages on request."""
    os.environ.setdefault(THP_VARIABLE, "1")
    return os.environ[THP_VARIABLE].strip() == "1" and transparent_huge_pages() in ("always", "madvise")


def transparent_huge_pages() -> str | None:
    """The kernel's THP mode: ``always``, ``madvise`` or ``never``; None when unknown."""
    try:
        match = re.search(r"\[(\w+)\]", THP_SETTING.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def cpu_memory_settings() -> dict[str, bool]:
    """Both settings of this module for a CPU training process; what is in effect."""
    return {"keep_freed_memory": keep_freed_memory(), "huge_pages": huge_pages_for_tensors()}


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
