"""train/allocator.py: after keep_freed_memory(), freed large blocks are reused without page faults.

Each case runs in a fresh interpreter (the setting is process-wide and cannot be undone)."""
from __future__ import annotations

import json
import os
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
print(json.dumps({"applied": applied, "faults": [step() for _ in range(10)]}))
"""
PAGES_PER_STEP = (64 + 32 + 96 + 48) * 2**20 // 4096


def _env(huge_pages: str | None) -> dict:
    """This environment with PyTorch's huge-page switch set (or removed): an earlier in-process
    train_fold may have set it here, and it changes how many faults a block costs."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if huge_pages is not None:
        env["THP_MEM_ALLOC_ENABLE"] = huge_pages
    return env


def _run(code: str, *args: str, huge_pages: str | None = "0"):
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         env=_env(huge_pages))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(mode: str) -> dict:
    return _run(PROBE, mode)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    default, keep = _probe("default"), _probe("keep")
    if not keep["applied"]:
        pytest.skip("not glibc: mallopt unavailable")
    after_warmup = slice(2, None)
    assert min(default["faults"][after_warmup]) > PAGES_PER_STEP // 2  # glibc default: a fresh mmap every time
    # after warm-up, freed blocks are reused: steps that fault nothing, and in all far fewer faults
    # (where a freed block lands in the heap varies, so now and then one block is faulted anew)
    assert min(keep["faults"][after_warmup]) < PAGES_PER_STEP // 20
    assert sum(keep["faults"][after_warmup]) < sum(default["faults"][after_warmup]) // 2


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
    result = _run(code)
    if result is None:
        pytest.skip("not glibc")
    assert result["released"] and result["kept"] - result["after"] > 100  # MiB given back


HUGE_PAGE_PROBE = r"""
import json, re, sys
from foalnet.train.allocator import huge_pages_for_tensors
requested = huge_pages_for_tensors()  # before the first tensor, as train_fold calls it
import torch
def huge_mib():
    return int(re.search(r"AnonHugePages:\s+(\d+)", open("/proc/self/smaps_rollup").read()).group(1)) / 1024
before = huge_mib()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
print(json.dumps({"requested": requested, "huge_mib": huge_mib() - before, "torch": torch.__version__}))
"""


def _kernel_mode() -> str | None:
    from foalnet.train.allocator import transparent_huge_pages

    return transparent_huge_pages()


@pytest.mark.skipif(_kernel_mode() not in ("madvise",), reason="needs THP in madvise mode (always: every block is huge)")
def test_huge_pages_back_large_tensors_only_when_requested():
    """With the switch unset, huge_pages_for_tensors turns PyTorch's on: a 64 MiB tensor sits on
    huge pages. A user's 0 is kept, and the same tensor gets none (the kernel gives them only on
    request in madvise mode)."""
    on = _run(HUGE_PAGE_PROBE, huge_pages=None)
    off = _run(HUGE_PAGE_PROBE, huge_pages="0")
    assert on["requested"] and on["huge_mib"] >= 8  # on huge pages (the kernel may refuse some)
    assert not off["requested"] and off["huge_mib"] < 2


def test_kernel_mode_is_read_from_the_bracketed_word(tmp_path, monkeypatch):
    from foalnet.train import allocator

    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(allocator, "THP_SETTING", setting)
    assert allocator.transparent_huge_pages() == "madvise"
    setting.write_text("always madvise [never]\n")
    assert allocator.transparent_huge_pages() == "never"
    monkeypatch.setattr(allocator, "THP_SETTING", tmp_path / "missing")
    assert allocator.transparent_huge_pages() is None


def test_huge_pages_keep_the_users_choice(monkeypatch):
    from foalnet.train import allocator

    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert allocator.huge_pages_for_tensors() is False
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    monkeypatch.setattr(allocator, "transparent_huge_pages", lambda: "never")
    assert allocator.huge_pages_for_tensors() is False  # requested, but the kernel gives none
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
