"""Run every benchmark script in benchmarks/ one after the other and summarise the outcome.

    python benchmarks/run_all.py            # each script with its own small defaults
    python benchmarks/run_all.py --full     # pass --full to the scripts that accept it
    python benchmarks/run_all.py --only train_step predict_latency

A benchmark script is any ``benchmarks/*.py`` with a ``__main__`` guard except this runner and
the helper modules in ``HELPERS``. Each runs in its own process (a crash or a memory peak in one
does not affect the next) with ``OMP_NUM_THREADS=1`` unless already set, as the CPU is shared.
The exit status is non-zero when any script failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPERS = {"run_all.py", "original_style.py"}  # importable modules, not benchmarks


def discover(folder: Path = HERE) -> list[Path]:
    """Benchmark scripts in ``folder``, sorted by name."""
    scripts = []
    for path in sorted(folder.glob("*.py")):
        if path.name in HELPERS or path.name.startswith("_"):
            continue
        if "__main__" in path.read_text(errors="replace"):
            scripts.append(path)
    return scripts


def accepts_full(script: Path) -> bool:
    """True when the script declares a ``--full`` option (checked in its source, no import)."""
    return '"--full"' in script.read_text(errors="replace") or "'--full'" in script.read_text(errors="replace")


def command(script: Path, full: bool) -> list[str]:
    """The command line for one script."""
    cmd = [sys.executable, str(script)]
    if full and accepts_full(script):
        cmd.append("--full")
    return cmd


def run(script: Path, full: bool) -> tuple[int, float]:
    """Run one script with live output; (exit status, wall seconds)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = command(script, full)
    print(f"\n=== {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
    t0 = time.perf_counter()
    status = subprocess.run(cmd, env=env, cwd=HERE.parent).returncode
    return status, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every benchmark script in benchmarks/.")
    p.add_argument("--full", action="store_true", help="pass --full to the scripts that accept it")
    p.add_argument("--only", nargs="+", default=None, help="script names (with or without .py)")
    p.add_argument("--list", action="store_true", help="list the scripts and exit")
    args = p.parse_args(argv)
    scripts = discover()
    if args.only:
        wanted = {name.removesuffix(".py") for name in args.only}
        unknown = wanted - {s.stem for s in scripts}
        if unknown:
            p.error(f"unknown benchmark(s) {sorted(unknown)}; have {[s.stem for s in scripts]}")
        scripts = [s for s in scripts if s.stem in wanted]
    if args.list:
        print("\n".join(s.name for s in scripts))
        return 0
    outcomes = [(s.name, *run(s, args.full)) for s in scripts]
    print("\n=== summary")
    for name, status, seconds in outcomes:
        print(f"  {name:28s} {'ok' if status == 0 else f'FAILED ({status})':12s} {seconds:8.1f} s")
    return 0 if all(status == 0 for _, status, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
