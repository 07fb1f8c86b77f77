"""One training run (one fold): data + model + optimiser -> Engine -> test report in RUN_DIR.

RUN_DIR layout: config.yaml (resolved + git hash + package versions), labels.txt, best/ (and
last/ with ``train.save_last``: ``FoalNet.save_pretrained`` folders), metrics.csv + tensorboard/,
checkpoints/ (while training; removed when the run completes unless ``train.keep_checkpoints``),
predictions.csv (test items, per-class probabilities), confusion.png, rejected.jsonl (items
skipped as unreadable), summary.json (written last: its presence means the run is complete).
With ``train.ensemble`` K > 1 the folder holds K such runs as member<k>/ and their combined outputs
(train/ensemble.py).

Model selection uses a dev split of the TRAINING folds (``protocol.split_fold``); the test fold
is read only after training, with the selected weights. ``data.select_on_test`` reproduces the
paper's optimistic protocol (select on the test fold) and every output says so.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from foalnet.config import RUN_CONFIG_FILE, ExperimentConfig
from foalnet.data.files import write_text_atomic
from foalnet.train.checkpoint import (
    TrainerState,
    find_latest,
    finish_checkpoints,
    load_checkpoint,
    recover_model_dir,
)
from foalnet.train.data import BalancedSampler, Collator, EmotionDataset, steps_per_epoch
from foalnet.train.loop import Engine, Hooks, build_optimizer, build_scheduler
from foalnet.train.metrics import plot_confusion
from foalnet.errors import UsageError

logger = logging.getLogger(__name__)

CONFIG_FILE = RUN_CONFIG_FILE
SUMMARY_FILE = "summary.json"
PAPER_PROTOCOL = ("select-on-test (paper protocol): the best epoch was chosen on the TEST fold, "
                  "so these test numbers are optimistic")
NO_DEV_PROTOCOL = "no dev split: every training speaker trains, the weights after the last epoch are kept"


@dataclass
class FoldData:
    """Records and resolved facts of one fold."""

    train: list[dict]
    dev: list[dict]
    test: list[dict]
    labels: list[str]
    protocol: str
    store: object | None
    speaker_independent: bool = True  # False for a corpus's official partition (MELD)
    speed_copies: int = 0  # speed-perturbed copies at the end of ``train`` (data.speed_perturb)

    @property
    def train_originals(self) -> list[dict]:
        """The training records without their speed-perturbed copies."""
        return self.train[: len(self.train) - self.speed_copies]


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY_FILE).is_file()


def has_started(run_dir: Path) -> bool:
    """Training began here: checkpoints of a single run, or members of an ensemble (train/ensemble.py)."""
    run_dir = Path(run_dir)
    return (run_dir / "checkpoints").is_dir() or any(run_dir.glob("member*/" + CONFIG_FILE))


def resolve_accelerator(cfg: ExperimentConfig):
    """An Accelerator for this config (mixed precision ``auto`` = fp16 on GPU, none on CPU)."""
    from accelerate import Accelerator

    t = cfg.train
    use_gpu = uses_gpu(cfg)
    precision = t.mixed_precision if t.mixed_precision != "auto" else ("fp16" if use_gpu else "no")
    acc = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=t.grad_accum,
        cpu=t.cpu,
        step_scheduler_with_optimizer=False,  # our schedule counts real optimiser steps
    )
    warning = single_process_cpu_launch(os.environ) if acc.num_processes == 1 else None
    if warning:
        logger.warning("%s", warning)
    return acc


def uses_gpu(cfg: ExperimentConfig) -> bool:
    """Whether training will run on a GPU (known before any tensor or Accelerator exists)."""
    return torch.cuda.is_available() and not cfg.train.cpu


def single_process_cpu_launch(env: Mapping[str, str]) -> str | None:
    """Detect ``accelerate launch --cpu --num_processes N>1`` that silently started ONE process.

    accelerate 1.x sends ``--cpu`` to its simple launcher, which starts N processes only through
    mpirun (``--mpirun_hostfile``); without it one process runs, with MASTER_ADDR set (the launcher
    sets it only for N > 1) but no WORLD_SIZE / MPI rank variables. N itself is not passed on, so
    the run cannot re-spawn itself: say which command works instead.
    """
    use_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    world = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if not use_cpu or "MASTER_ADDR" not in env or any(k in env for k in world):
        return None
    return ("`accelerate launch --cpu --num_processes N` started ONE process (accelerate needs "
            "mpirun for several CPU processes); training runs single-process. For N gloo CPU "
            "processes use `accelerate launch --multi_gpu --num_processes N -m foalnet train ...` "
            "(on a machine without GPUs) or `torchrun --nproc_per_node N -m foalnet train ...`")


# ----------------------------------------------------------------------------------- data


def load_fold(cfg: ExperimentConfig) -> FoldData:
    """Read the manifest, split the fold (dev from training folds only), open the visual cache."""
    from foalnet.data.manifest import read_manifest, read_prepare_meta
    from foalnet.data.protocol import OFFICIAL_SPLIT_PROTOCOL, has_official_split, speed_copies, split_fold

    d = cfg.data
    records = read_manifest(d.data_dir)
    labels = list(read_prepare_meta(d.data_dir)["labels"])
    split = split_fold(records, d.fold, dev_speakers=resolve_dev_speakers(records, d),
                       seed=cfg.train.seed)
    official = has_official_split(records)
    if d.select_on_test:
        train, dev, protocol = split.train + split.dev, split.test, PAPER_PROTOCOL
    elif official:
        train, dev, protocol = split.train, split.dev, OFFICIAL_SPLIT_PROTOCOL
    elif not split.dev:  # data.dev_speakers = 0
        train, dev = split.train, split.dev
        protocol = f"{NO_DEV_PROTOCOL}; test fold {d.fold} untouched during training"
    else:
        train, dev = split.train, split.dev
        dev_speakers = sorted({str(r.get("speaker")) for r in dev})
        protocol = (f"dev split from the training folds (held-out speakers {', '.join(dev_speakers)}); "
                    f"test fold {d.fold} untouched during selection")
    store = open_visual_store(cfg) if cfg.model.modality in ("av", "video") else None
    copies = speed_copies(train, list(d.speed_perturb)) if d.speed_perturb else []
    return FoldData(train + copies, dev, split.test, labels, protocol + protocol_notes(cfg), store,
                    speaker_independent=not official, speed_copies=len(copies))


def protocol_notes(cfg: ExperimentConfig) -> str:
    """What a run's and a cv summary's protocol lines add for the training data's treatment:
    speed perturbation, per-speaker normalisation."""
    factors = cfg.data.speed_perturb
    speed = (f"; training clips speed-perturbed (factors {', '.join(f'{f:g}' for f in factors)}: one "
             "copy each, training only)") if factors else ""
    return speed + speaker_norm_note(cfg)


def speaker_norm_note(cfg: ExperimentConfig) -> str:
    """What the protocol line adds when the audio front end is z-scored per speaker: the test
    speakers' statistics come from their own (unlabelled) test clips."""
    if cfg.model.modality == "video" or not (cfg.model.audio_options or {}).get("speaker_norm"):
        return ""
    return ("; audio features z-scored per speaker with each speaker's own clips, test speakers "
            "included (their unlabelled test audio; `foalnet predict` uses the training speakers' "
            "pooled statistics)")


DEV_MIN_ITEMS = 48  # 12 per class of four: below that one clip moves a class recall by > 8 points
DEV_MIN_SHARE = 0.10  # of the training pool's utterances
DEV_MAX_SPEAKER_SHARE = 1 / 3  # never hold out more than a third of the pool's speakers


def resolve_dev_speakers(records: list[dict], data) -> int:
    """``data.dev_speakers``, or for ``"auto"`` the number of held-out speakers that gives the
    dev split about max(DEV_MIN_ITEMS, DEV_MIN_SHARE x pool) utterances at the pool's mean
    utterances per speaker, capped at a third of its speakers (at least 1).

    Why: the dev split picks the epoch; with one speaker of 8 clips its UA moves by 12.5 points
    per clip and the "best" epoch is noise. IEMOCAP (8 pool speakers of ~550) stays at 1."""
    if data.dev_speakers != "auto":
        return int(data.dev_speakers)
    pool = [r for r in records if int(r["fold"]) != int(data.fold)]
    speakers = {r.get("speaker") for r in pool}
    if not pool or None in speakers:  # split_fold then holds out a share of utterances instead
        return 1
    target = max(DEV_MIN_ITEMS, DEV_MIN_SHARE * len(pool))
    wanted = math.ceil(target / (len(pool) / len(speakers)))
    return max(1, min(wanted, int(len(speakers) * DEV_MAX_SPEAKER_SHARE)))


def open_visual_store(cfg: ExperimentConfig):
    """The DATA_DIR's visual-feature cache, or a usage error saying what to run (exit 2, no traceback)."""
    from foalnet.features.base import FeatureError
    from foalnet.features.store import VisualFeatureStore

    data_dir = cfg.data.data_dir
    try:
        return VisualFeatureStore.open(data_dir, encoder=cfg.data.visual_encoder)
    except FeatureError as err:
        found = err.reason.split(";")[0]  # the store's own hint is replaced by the full one below
        raise UsageError(
            f"{data_dir}: modality {cfg.model.modality!r} needs cached visual features, but "
            f"{err.path}: {found}. Run `foalnet extract-visual {data_dir}` first, "
            "or train on audio only with `--modality audio`") from None


def resolve_model_config(cfg: ExperimentConfig, fold: FoldData) -> ExperimentConfig:
    """Write the data's facts into the model config: labels, visual encoder, its dim and settings."""
    updates: dict = {"labels": fold.labels}
    if fold.store is not None:
        meta = dict(fold.store.meta)
        updates.update(
            video_dim=int(fold.store.dim),
            visual_encoder=str(meta.get("encoder", cfg.model.visual_encoder)),
            visual_settings={k: v for k, v in meta.items() if k not in ("encoder", "dim")},
        )
    return replace(cfg, model=replace(cfg.model, **updates))


def prepare_audio_cache(cfg: ExperimentConfig, fold: FoldData, model, acc) -> tuple[Any, dict[str, str]]:
    """(AudioFrontendStore, {id: reason}) with every item of the fold cached, or (None, {}) when
    ``data.cache_audio`` is off or the audio encoder has no fixed front end.

    The main process computes what is missing (on the accelerator); the others then find it all
    there. Items whose audio cannot be read come back in the dict and are reported like any other
    failed item."""
    from foalnet.features.audio_cache import build_audio_cache
    from foalnet.train.loop import show_progress_bars

    if not (cfg.data.cache_audio and model.uses_audio) or model.audio_frontend_fingerprint() is None:
        return None, {}
    records = fold.train + fold.dev + fold.test
    store = report = None
    if acc.is_main_process:
        store, report = build_audio_cache(cfg.data.data_dir, model, records,
                                          progress=show_progress_bars(acc))  # no bar in a log
        acc.print(report.summary())
    acc.wait_for_everyone()
    if not acc.is_main_process:  # everything is there now: this only checks the keys
        store, report = build_audio_cache(cfg.data.data_dir, model, records, progress=False)
    return store, {r["id"]: f"audio: {r['path']}: {r['reason']}" for r in report.rejected}


def speaker_norm_statistics(fold: FoldData, model, audio_store) -> dict | None:
    """Per-speaker front-end statistics of every split (``features/speaker_norm.py``), plus
    ``POOLED`` = the training speakers' pooled statistics, which the model also keeps for
    utterances without a speaker; None when the audio encoder has no ``speaker_norm``."""
    encoder = model.audio_encoder if model.uses_audio else None
    if not getattr(getattr(encoder, "config", None), "speaker_norm", False):
        return None
    if audio_store is None:
        raise UsageError("the audio encoder's speaker_norm normalises the cached front-end "
                         "features: keep data.cache_audio=true")
    from foalnet.features.speaker_norm import POOLED, pooled_statistics, speaker_statistics

    stats = speaker_statistics(audio_store, fold.train + fold.dev + fold.test)
    stats[POOLED] = pooled_statistics(stats, (r.get("speaker") for r in fold.train_originals))
    encoder.set_speaker_fallback(*stats[POOLED])
    return stats


def make_loaders(cfg: ExperimentConfig, fold: FoldData, num_processes: int, audio_store=None,
                 audio_failed: dict[str, str] | None = None, audio_norm: dict | None = None):
    """Datasets, the class-balanced sampler and the three DataLoaders (not yet prepared)."""
    from torch.utils.data import DataLoader

    m, t = cfg.model, cfg.train
    use_audio, use_video = m.modality in ("av", "audio"), m.modality in ("av", "video")
    audio_dim = audio_store.dim if audio_store is not None else None

    def dataset(records: list[dict]) -> EmotionDataset:
        return EmotionDataset(records, m.labels, fold.store, use_audio=use_audio, use_video=use_video,
                              sample_rate=m.sample_rate, max_audio_seconds=m.max_audio_seconds,
                              max_video_frames=m.max_video_frames, audio_store=audio_store,
                              failed=audio_failed, audio_norm=audio_norm)

    train_set, dev_set, test_set = dataset(fold.train), dataset(fold.dev), dataset(fold.test)
    lengths = train_set.durations() if cfg.data.length_grouped else None
    sampler = BalancedSampler(train_set.targets(), seed=t.seed, balanced=t.balanced_sampling,
                              lengths=lengths, batch_size=t.batch_size,
                              group_batches=cfg.data.group_batches, draws=len(fold.train_originals))
    common = dict(num_workers=cfg.data.num_workers, persistent_workers=False)
    eval_bs = t.eval_batch_size or t.batch_size
    # own generators: creating a loader iterator must not consume the global RNG (exact resume)
    train_loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler,
                              collate_fn=Collator(use_audio, use_video, m.video_dim, keep_failed=False,
                                                  audio_feature_dim=audio_dim),
                              generator=torch.Generator().manual_seed(t.seed), **common)
    eval_collate = Collator(use_audio, use_video, m.video_dim, keep_failed=True, audio_feature_dim=audio_dim)
    dev_loader = (DataLoader(dev_set, batch_size=eval_bs, shuffle=False, collate_fn=eval_collate,
                             generator=torch.Generator().manual_seed(t.seed), **common)
                  if len(dev_set) else None)
    test_loader = DataLoader(test_set, batch_size=eval_bs, shuffle=False, collate_fn=eval_collate,
                             generator=torch.Generator().manual_seed(t.seed), **common)
    return sampler, train_loader, dev_loader, test_loader


# ----------------------------------------------------------------------------------- run


def train_fold(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
               hooks: Hooks | None = None, accelerator=None) -> dict:
    """Train (or resume) one fold into ``run_dir`` and return its summary (see module doc)."""
    from accelerate.utils import set_seed

    from foalnet.model.foalnet import FoalNet

    run_dir = Path(run_dir)
    _quiet_accelerate()
    if resume and (run_dir / CONFIG_FILE).is_file():
        cfg = ExperimentConfig.load_yaml(run_dir / CONFIG_FILE)
    cfg.check_complete()
    if resume and is_complete(run_dir):  # nothing to train: report the finished run
        if os.environ.get("RANK", "0") == "0":  # a kill after summary.json may have left these
            finish_checkpoints(run_dir / "checkpoints", cfg.train.keep_checkpoints)
        logger.info("%s is already complete (%s): nothing to resume", run_dir, SUMMARY_FILE)
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    if not resume and (has_started(run_dir) or is_complete(run_dir)):
        raise UsageError(f"{run_dir} already holds a run: pass --resume to continue it, "
                         "or choose a new --out")
    if cfg.data.fold is None:
        raise UsageError("data.fold is not set: pass --fold K")
    started = time.time()
    acc = accelerator or resolve_accelerator(cfg)
    if cfg.train.ensemble > 1:  # K runs of this function, one per seed, scored together
        from foalnet.train.ensemble import train_ensemble

        return train_ensemble(cfg, run_dir, hooks, acc)
    set_seed(cfg.train.seed)
    fold = load_fold(cfg)
    cfg = resolve_model_config(cfg, fold)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(run_dir / CONFIG_FILE, extra=run_provenance(fold.protocol))
        write_text_atomic(run_dir / "labels.txt", "\n".join(fold.labels) + "\n")
    acc.wait_for_everyone()
    acc.print(f"fold {cfg.data.fold}: train {len(fold.train)}  dev {len(fold.dev)}  "
              f"test {len(fold.test)}  modality {cfg.model.modality}  | {fold.protocol}")

    set_seed(cfg.train.seed)  # model init independent of what the data code drew
    model = FoalNet(cfg.model).to(acc.device)
    audio_store, audio_failed = prepare_audio_cache(cfg, fold, model, acc)
    sampler, train_loader, dev_loader, test_loader = make_loaders(
        cfg, fold, acc.num_processes, audio_store, audio_failed,
        audio_norm=speaker_norm_statistics(fold, model, audio_store))
    per_epoch = steps_per_epoch(len(fold.train_originals), cfg.train.batch_size, acc.num_processes,
                                cfg.train.grad_accum)
    t = replace(cfg.train, epochs=train_epochs(cfg.train, per_epoch))  # train.min_steps: more epochs
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    total = t.epochs * per_epoch
    scheduler = build_scheduler(optimizer, t.schedule, total, t.warmup_ratio)
    loaders = [train_loader, test_loader] + ([dev_loader] if dev_loader is not None else [])
    prepared = acc.prepare(*loaders, model, optimizer, scheduler)
    train_loader, test_loader = prepared[0], prepared[1]
    dev_loader = prepared[2] if dev_loader is not None else None
    model, optimizer, scheduler = prepared[-3:]

    engine = Engine(acc, t, run_dir, fold.labels, hooks or Hooks(),
                    select_name="test" if cfg.data.select_on_test else "dev",
                    averaged=moving_average(acc, model, t.ema_decay))
    state = _initial_state(acc, run_dir, resume, sampler)
    try:
        if not state.finished:
            state = engine.fit(model, optimizer, scheduler, train_loader, sampler, dev_loader, state)
            if state.epoch < t.epochs:  # stopped early by train.max_steps: remember it is done
                engine.checkpoint(state)
        summary = _test_and_report(cfg, acc, engine, model, test_loader, fold, state, run_dir,
                                   time.time() - started)
    finally:
        engine.close()
    if acc.is_main_process:  # complete (summary.json written): the checkpoints are not needed
        finish_checkpoints(run_dir / "checkpoints", t.keep_checkpoints)
    acc.wait_for_everyone()
    acc.free_memory(model, optimizer, scheduler)
    return summary


def moving_average(acc, model, decay: float):
    """torch's ``AveragedModel`` (EMA of parameters and buffers) of the unwrapped model, registered
    for accelerate's checkpoints (so ``--resume`` continues it exactly); None when decay is 0."""
    if decay <= 0.0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    averaged = AveragedModel(acc.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    acc.register_for_checkpointing(averaged)
    return averaged


def train_epochs(train, per_epoch: int) -> int:
    """``train.epochs``, raised to ceil(``train.min_steps`` / ``per_epoch``) when that is more.

    Why: a fixed epoch count gives a small corpus few optimiser steps (56 training clips, batch
    16: 4 steps an epoch, 120 in 30 epochs), and the offline model under-fits there; a corpus
    large enough already makes ``min_steps`` in ``epochs`` and trains as before."""
    return max(train.epochs, math.ceil(train.min_steps / max(1, per_epoch)))


def _quiet_accelerate() -> None:
    """accelerate logs every checkpoint file at INFO; keep the console to our epoch lines."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("accelerate").setLevel(logging.WARNING)


def _initial_state(acc, run_dir: Path, resume: bool, sampler: BalancedSampler) -> TrainerState:
    latest = find_latest(run_dir / "checkpoints") if resume else None
    if latest is None:
        if resume:
            acc.print(f"no complete checkpoint in {run_dir}/checkpoints: starting from scratch")
        return TrainerState(sampler=sampler.state_dict())
    for name in ("best", "last"):
        recover_model_dir(run_dir / name)
    try:
        state = load_checkpoint(acc, latest)
    except RuntimeError as err:  # e.g. size mismatch: the model code/defaults changed since
        detail = str(err).strip().splitlines()[-1].strip()
        raise UsageError(f"{latest}: checkpoint does not fit the model built from "
                         f"{run_dir / CONFIG_FILE} ({detail}); start a new --out") from err
    sampler.load_state_dict(state.sampler)
    acc.print(f"resumed from {latest} (epoch {state.epoch + 1}, step {state.step_in_epoch})")
    return state


def _test_and_report(cfg, acc, engine: Engine, model, test_loader, fold: FoldData,
                     state: TrainerState, run_dir: Path, seconds: float) -> dict:
    """Load the selected weights, evaluate the test fold once, write predictions/PNG/summary."""
    from foalnet.model.foalnet import FoalNet

    best_dir = run_dir / "best"
    if best_dir.is_dir():
        best = FoalNet.from_pretrained(best_dir)
        acc.unwrap_model(model).load_state_dict(best.state_dict())
    result = engine.evaluate(model, test_loader, test_loader.dataset.targets())
    engine._note_failed(state, list(result.failed.items()))
    summary = {
        "test": {k: result.metrics[k] for k in ("ua", "wa", "macro_f1", "confusion", "n")},
        "selected_epoch": state.best_epoch,
        "selected_on": engine.select_name,
        "select_metric": cfg.train.select_metric,
        "selected_score": state.best_score,
        "selection": engine.selection_report(state.history, len(fold.dev)),
        "protocol": fold.protocol,
        "speaker_independent": fold.speaker_independent,
        "fold": cfg.data.fold,
        "modality": cfg.model.modality,
        "use_avel": cfg.model.use_avel,
        "use_mem": cfg.model.use_mem,
        "labels": fold.labels,
        "epochs_run": len(state.history),
        "train_items": len(fold.train_originals),
        "speed_copies": fold.speed_copies,
        "dev_items": len(fold.dev),
        "test_items": len(fold.test),
        "skipped_items": len(state.skipped),
        "nan_steps": state.nan_steps,
        "seconds": round(seconds, 1),
    }
    if acc.is_main_process:
        _write_predictions(run_dir / "predictions.csv", fold, result)
        title = f"fold {cfg.data.fold} test UA {summary['test']['ua']:.3f}"
        if cfg.data.select_on_test:
            title += " (selected on test)"
        plot_confusion(summary["test"]["confusion"], fold.labels, run_dir / "confusion.png", title)
        _write_rejected(run_dir / "rejected.jsonl", fold, state.skipped)
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    acc.wait_for_everyone()
    acc.print(f"fold {cfg.data.fold} TEST  UA {summary['test']['ua']:.4f}  WA {summary['test']['wa']:.4f}"
              f"  F1 {summary['test']['macro_f1']:.4f}  (epoch {state.best_epoch} selected on "
              f"{engine.select_name}; {len(state.skipped)} items skipped)")
    return summary


def _write_predictions(path: Path, fold: FoldData, result) -> None:
    references = [fold.labels.index(fold.test[i]["label"]) for i in result.index.tolist()]
    ids = [fold.test[i]["id"] for i in result.index.tolist()]
    write_text_atomic(path, predictions_csv(ids, references, result.probs, fold.labels))


def predictions_csv(ids: list[str], references: list[int], probs, labels: list[str]) -> str:
    """predictions.csv: id, label, prediction (the most probable class), p_<class> per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", "prediction", *[f"p_{name}" for name in labels]])
    for item_id, ref, p in zip(ids, references, probs):
        writer.writerow([item_id, labels[ref], labels[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])
    return buffer.getvalue()


def _write_rejected(path: Path, fold: FoldData, skipped: dict[str, str]) -> None:
    by_id = {r["id"]: r for r in fold.train + fold.dev + fold.test}
    lines = []
    for item_id, reason in sorted(skipped.items()):
        record = by_id.get(item_id, {})
        lines.append(json.dumps({"id": item_id, "path": record.get("wav"), "reason": reason}))
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def run_provenance(protocol: str) -> dict:
    """Git hash of the source tree and package versions, saved beside the resolved config."""
    import importlib.metadata as md

    versions = {}
    for name in ("foalnet", "torch", "transformers", "accelerate", "numpy", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"git": _git_hash(), "python": platform.python_version(), "packages": versions,
            "protocol": protocol}


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
