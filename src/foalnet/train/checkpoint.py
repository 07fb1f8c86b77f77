"""Atomic, resumable checkpoints.

A checkpoint is a folder ``RUN_DIR/checkpoints/e<epoch>-s<step>/`` holding accelerate's
``save_state`` output (model, optimizer, scheduler, grad scaler, RNG states of every process) and
``trainer_state.json`` (epoch, step inside the epoch, best dev score, history, sampler state,
skipped items). It is written under a temporary name and renamed into place (``os.replace``), and
only then does the ``latest`` pointer move (temp file + ``os.replace``). A kill at any moment
therefore leaves either the previous complete checkpoint or the new one, never a half-written
folder that ``--resume`` would load: temporary folders are ignored and cleaned up later.
While a new checkpoint is written the previous one stays, so the disk briefly holds two; once the
run is complete (summary.json written) ``finish_checkpoints`` removes them (``train.keep_checkpoints``
keeps the latest N).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from foalnet.data.files import write_text_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
POINTER = "latest"
_NAME = re.compile(r"^e(\d+)-s(\d+)$")


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimiser-loop batches already done in that epoch
    global_step: int = 0  # batches done in total
    best_score: float | None = None  # best dev score so far (higher is better)
    best_epoch: int | None = None  # 1-based epoch of best_score
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch
    running: dict = field(default_factory=dict)  # loss sums of the epoch in progress
    sampler: dict = field(default_factory=dict)  # BalancedSampler.state_dict()
    nan_steps: int = 0  # non-finite losses skipped so far
    consecutive_nan: int = 0  # non-finite losses in a row (stops the run at nan_patience)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> reason of unreadable items
    finished: bool = False  # training epochs done (test evaluation may still be pending)

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainerState":
        return cls(**raw)


def checkpoint_name(epoch: int, step_in_epoch: int) -> str:
    return f"e{epoch:04d}-s{step_in_epoch:06d}"


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def save_checkpoint(accelerator, ckpt_root: Path, state: TrainerState, keep: int = 1) -> Path:
    """Save the accelerator's objects + ``state`` as a new complete checkpoint (all ranks call)."""
    ckpt_root = Path(ckpt_root)
    name = checkpoint_name(state.epoch, state.step_in_epoch)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # written last: a folder without it is incomplete by construction
        write_text_atomic(tmp / STATE_FILE, json.dumps(asdict(state)))
        if final.exists():  # same position reached again after a resume: replace it safely
            trash = ckpt_root / f".old-{name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        write_text_atomic(ckpt_root / POINTER, name + "\n")
        _prune(ckpt_root, keep)
    accelerator.wait_for_everyone()
    return final


def _complete(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None and (path / STATE_FILE).is_file()


def _prune(ckpt_root: Path, keep: int) -> None:
    done = sorted((p for p in ckpt_root.iterdir() if _complete(p)), key=_order)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def finish_checkpoints(ckpt_root: Path, keep: int) -> None:
    """A completed run keeps its latest ``keep`` checkpoints; 0 removes the folder (main process)."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return
    if keep == 0:
        shutil.rmtree(ckpt_root, ignore_errors=True)
    else:
        _prune(ckpt_root, keep)


def find_latest(ckpt_root: Path) -> Path | None:
    """The checkpoint ``latest`` names if complete, else the newest complete one, else None."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return None
    pointer = ckpt_root / POINTER
    if pointer.is_file():
        named = ckpt_root / pointer.read_text().strip()
        if _complete(named):
            return named
        logger.warning("checkpoint pointer %s names an incomplete folder; scanning", pointer)
    done = sorted((p for p in ckpt_root.iterdir() if _complete(p)), key=_order)
    return done[-1] if done else None


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    """Restore the accelerator's objects and RNG states from ``path``; return the trainer state."""
    path = Path(path)
    if not _complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    accelerator.load_state(str(path))
    return TrainerState.from_dict(json.loads((path / STATE_FILE).read_text()))


def save_model_dir(unwrapped_model, target: Path) -> None:
    """``save_pretrained`` into a temp folder, then swap it into ``target`` (main process only)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped_model.save_pretrained(str(tmp))
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_model_dir(target: Path) -> None:
    """Undo a swap interrupted between its two renames (keeps the previous complete folder)."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.exists():
        os.replace(old, target)
