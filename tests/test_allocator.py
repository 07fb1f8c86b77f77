"""The CPU allocator recipe of docs/ARCHITECTURE.md (an opt-in of the launching shell, never set
by foalnet): with ``GLIBC_TUNABLES`` keeping freed blocks, large blocks are reused without page
faults. Each case runs in a fresh interpreter (glibc reads the tunables at process start)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RECIPE = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"  # as documented
# Python's own large buffers come from glibc's malloc, as torch's CPU tensors do (posix_memalign):
# the same mmap threshold decides, without importing torch in each probe process
PROBE = r"""
import json, resource
def step():  # a training step in miniature: large blocks of mixed sizes, written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [bytearray(mib * 2**20) for mib in (64, 32, 96, 48)]  # zero-filled: every page written
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([step() for _ in range(10)]))
"""
PAGES_PER_STEP = (64 + 32 + 96 + 48) * 2**20 // 4096


def _faults(tunables: str | None) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="glibc tunables")
def test_documented_glibc_tunables_reuse_freed_blocks_without_page_faults():
    default, tuned = _faults(None), _faults(RECIPE)
    after_warmup = slice(2, None)
    assert min(default[after_warmup]) > PAGES_PER_STEP // 2  # glibc default: a fresh mmap every time
    # after warm-up, freed blocks are reused: far fewer faults (where a freed block lands in the
    # heap varies, so now and then one block is faulted anew)
    assert min(tuned[after_warmup]) < PAGES_PER_STEP // 20
    assert sum(tuned[after_warmup]) < sum(default[after_warmup]) // 2


def test_the_recipe_is_the_one_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    assert f"GLIBC_TUNABLES={RECIPE}" in doc and "THP_MEM_ALLOC_ENABLE=1" in doc
