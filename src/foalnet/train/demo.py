"""``foalnet demo``: the whole pipeline offline, on a fresh machine, in minutes.

synth (IEMOCAP-shaped synthetic corpus) -> prepare iemocap -> extract-visual --encoder tiny ->
cross-validation of the ``tiny`` preset for the chosen ablation rows -> the table (with 95 %
intervals, the paper's columns marked as another corpus) and OUT/ablation/report.html. Every stage is
the same function the separate commands run (called in-process, no shelling out), and every
stage is idempotent, so re-running the demo reuses what is done.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from foalnet.data.files import write_text_atomic

log = logging.getLogger(__name__)


def _stage(argv: list[str]) -> int:
    """Run one data/ or features/ sub-command in-process through its own parser: the CLI's
    parsers and defaults, without importing the CLI (which sits above this stage)."""
    import argparse

    from foalnet.data import commands as data_commands
    from foalnet.features import commands as feature_commands

    parser = argparse.ArgumentParser(prog="foalnet")
    subparsers = parser.add_subparsers(dest="command")
    data_commands.register(subparsers)
    feature_commands.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def _row_worker(cfg_dict: dict, out_dir: str, row: str, folds: list[int] | None) -> str:
    """One ablation row's cross-validation in a worker process with one torch thread.

    Rows run side by side and their lines interleave on one console: every printed line is
    tagged ``[row fold K]`` (``loop.TaggedAccelerator``), log records carry ``[row]``, and no
    progress bar is drawn (two processes redrawing one terminal line garble both). The
    worker is a process of its own (spawned for this row), so its logging setup is its own."""
    import torch

    from foalnet.config import ExperimentConfig
    from foalnet.train.ablate import row_config
    from foalnet.train.cv import run_cv
    from foalnet.train.loop import tagged
    from foalnet.train.run import resolve_accelerator

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)s [{row}] %(name)s: %(message)s")
    cfg = row_config(ExperimentConfig.from_dict(cfg_dict), row)
    accelerator = tagged(resolve_accelerator(cfg), row, progress_bars=False)
    run_cv(cfg, Path(out_dir) / row, folds=folds, accelerator=accelerator,
           title=f"ablation row {row}")
    return row


def _train_rows_in_parallel(cfg, out_dir: Path, rows: list[str], folds: list[int] | None) -> None:
    """Small models use one core badly: train the rows side by side, one process per core.

    Rows are submitted in the given order (the expensive full model first), so on 2 cores the
    full row runs beside audio-only and then video-only. With one core this is a no-op and
    ``run_ablation`` trains everything in this process.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(rows), os.cpu_count() or 1)
    if workers < 2:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        jobs = [pool.submit(_row_worker, cfg.to_dict(), str(out_dir), row, folds) for row in rows]
        for job in jobs:
            log.info("ablation row %s trained", job.result())


def run_demo(out: Path, size: str = "small", seed: int = 0, rows: str = "full,audio_only,video_only",
             folds: list[int] | None = None, overrides: list[str] | None = None) -> int:
    """Run the offline demo into ``out``; print and save the table; return the exit status."""
    from foalnet.config import preset
    from foalnet.train.ablate import ablation_markdown, run_ablation
    from foalnet.train.report import write_report

    out = Path(out)
    started = time.time()
    synth_root = out / "synth" / "IEMOCAP_full_release"
    data_dir = out / "data"
    marker = out / "synth" / ".complete"
    if not marker.is_file():
        from foalnet.data.synth import generate

        generate(out / "synth", seed=seed, size=size)
        write_text_atomic(marker, f"size={size} seed={seed}\n")
    timings = {"synth": time.time() - started}
    status = _stage(["prepare", "iemocap", str(synth_root), "--out", str(data_dir)])
    if status == 2:
        return 2
    timings["prepare"] = time.time() - started - sum(timings.values())
    status = _stage(["extract-visual", str(data_dir), "--encoder", "tiny", "--no-progress"])
    if status == 2:
        return 2
    timings["extract-visual"] = time.time() - started - sum(timings.values())

    # one model per fold, not the preset's ensemble of five: the synthetic corpus passes the demo's
    # bar with one, and five would make the first command five times as long (--set train.ensemble=5)
    cfg = preset("tiny").override([f"data.data_dir={data_dir.resolve()}", "train.ensemble=1", *(overrides or [])])
    row_names = [r.strip() for r in rows.split(",")]
    _train_rows_in_parallel(cfg, out / "ablation", row_names, folds)
    results = run_ablation(cfg, out / "ablation", rows=row_names, folds=folds)  # reuses the folds
    timings["cv"] = time.time() - started - sum(timings.values())
    report = write_report(out / "ablation")  # the same file `foalnet report OUT/ablation` writes
    table = (ablation_markdown(results) + f"\nOurs: the SYNTHETIC IEMOCAP-shaped corpus "
             f"(`foalnet synth --size {size} --seed {seed}`), `tiny` preset (offline audio front end, "
             "tiny visual encoder), not IEMOCAP.\n")
    total = time.time() - started
    footer = ("\nDemo stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
              + f"; total {total:.0f} s.\nHTML report (opens offline): {report}\n")
    write_text_atomic(out / "demo.md", table + footer)
    print(table + footer)
    return 0
