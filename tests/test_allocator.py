"""train/allocator.py: after keep_freed_memory(), freed large blocks are reused without page faults.

Each case runs in a fresh interpreter (the setting is process-wide and cannot be undone)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
import torch
from foalnet.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():  # a training step in miniature: large blocks of mixed sizes, written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(mib * 2**20 // 4) for mib in (64, 32, 96, 48)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": [step() for _ in range(6)]}))
"""
PAGES_PER_STEP = (64 + 32 + 96 + 48) * 2**20 // 4096


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    default, keep = _probe("default"), _probe("keep")
    if not keep["applied"]:
        pytest.skip("not glibc: mallopt unavailable")
    assert default["faults"][-1] > PAGES_PER_STEP // 2  # glibc default: a fresh mmap every time
    assert keep["faults"][-1] < PAGES_PER_STEP // 20  # after warm-up, freed blocks are reused


def test_keep_freed_memory_is_idempotent():
    from foalnet.train.allocator import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()


def test_release_freed_memory_returns_heap_pages():
    """Freed heap blocks stay resident until released (with keep_freed_memory: always)."""
    code = r"""
import json, re
import torch
from foalnet.train.allocator import keep_freed_memory, release_freed_memory
def rss_mib():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
if not keep_freed_memory():
    print(json.dumps(None)); raise SystemExit
blocks = [torch.ones(16 * 2**20 // 4) for _ in range(8)]  # 128 MiB from the heap
del blocks
kept = rss_mib()
released = release_freed_memory()
print(json.dumps({"kept": kept, "after": rss_mib(), "released": released}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result is None:
        pytest.skip("not glibc")
    assert result["released"] and result["kept"] - result["after"] > 100  # MiB given back
