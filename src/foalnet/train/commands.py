"""CLI of the training stage: ``foalnet train``, ``cv``, ``ablate``, ``svm`` and the offline ``demo``.

Each command builds an ``ExperimentConfig`` the same way: preset (or ``--config FILE.yaml``) ->
DATA_DIR / fold / modality / select-on-test from the flags -> ``--set section.key=value``
overrides (coerced to the field types) -> validated. Exit status: 0 ok, 1 the run failed
(diverged) or completed with rejected items (unreadable audio / corrupt features, listed in
rejected.jsonl; all outputs are still written), 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

from foalnet.config import RUN_CONFIG_FILE as CONFIG_FILE
from foalnet.data.files import FileProblem
from foalnet.data.manifest import require_manifest
from foalnet.errors import TrainingDiverged, UsageError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- config from flags


def build_config(args: argparse.Namespace):
    """Preset or YAML, then flags, then ``--set`` overrides."""
    from foalnet.config import ExperimentConfig, preset

    name = getattr(args, "preset", None) or "paper"
    cfg = ExperimentConfig.load_yaml(args.config) if getattr(args, "config", None) else preset(name)
    data = cfg.data
    if getattr(args, "data_dir", None):
        data = replace(data, data_dir=str(Path(args.data_dir).resolve()))
    if getattr(args, "fold", None) is not None:
        data = replace(data, fold=args.fold)
    if getattr(args, "select_on_test", False):
        data = replace(data, select_on_test=True)
    model = cfg.model
    if getattr(args, "modality", None):
        single = args.modality != "av"
        model = replace(model, modality=args.modality,
                        use_avel=False if single else model.use_avel,
                        use_mem=False if single else model.use_mem)
    train = cfg.train
    device = getattr(args, "device", None)
    if device == "cpu":
        train = replace(train, cpu=True)
    elif device == "auto":
        train = replace(train, cpu=False)
    elif device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU)")
        train = replace(train, cpu=False)
    if getattr(args, "save_last", False):
        train = replace(train, save_last=True)
    if getattr(args, "keep_checkpoints", None) is not None:
        train = replace(train, keep_checkpoints=args.keep_checkpoints)
    cfg = replace(cfg, data=data, model=model, train=train)
    return cfg.override(list(getattr(args, "set", None) or []))


def _parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--folds {text!r}: expected comma-separated integers like 1,2,3") from None


def _parse_seeds(text: str | None, overrides: list[str]) -> list[int] | None:
    """``--seeds 1,2,3`` as integers; refused beside ``--set train.seed=`` (which one would win?)."""
    if not text:
        return None
    if any(item.split("=", 1)[0].strip() == "train.seed" for item in overrides):
        raise UsageError("--seeds and --set train.seed: give one of them (each seed of --seeds "
                         "is a train.seed)")
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected comma-separated integers like 1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: expected distinct integers like 1,2,3")
    return seeds


def _add_common(parser: argparse.ArgumentParser, data_required: bool = True) -> None:
    if data_required:
        parser.add_argument("data_dir", metavar="DATA_DIR", help="prepared data folder")
    else:
        parser.add_argument("data_dir", metavar="DATA_DIR", nargs="?", help="prepared data folder")
    parser.add_argument("--preset", default=None, choices=("paper", "tiny"),
                        help="experiment preset (default: paper = spec §2)")
    parser.add_argument("--config", metavar="FILE.yaml", help="start from this experiment YAML instead")
    parser.add_argument("--modality", choices=("av", "audio", "video"), help="single-modality rows")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to train: auto = the GPUs accelerate finds, else the CPU (default); "
                        "pick GPUs with CUDA_VISIBLE_DEVICES or accelerate launch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. train.lr=3e-4 (repeatable)")
    parser.add_argument("--select-on-test", action="store_true",
                        help="paper protocol: choose the best epoch on the TEST fold (optimistic)")
    parser.add_argument("--save-last", action="store_true",
                        help="also write RUN_DIR/last/, the weights after the final epoch (train.save_last)")
    parser.add_argument("--keep-checkpoints", type=int, metavar="N",
                        help="keep the latest N resumable checkpoints once a run is complete "
                        "(train.keep_checkpoints; default 0: removed)")


def _guard(func):
    """Turn configuration/data errors into exit status 2 and divergence into 1, with a message."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except TrainingDiverged as err:
            log.error("training stopped: %s", err)
            return 1
        except (UsageError, FileProblem, FileNotFoundError) as err:
            log.error("%s", err)
            return 2

    return wrapped


# ----------------------------------------------------------------------------- commands


def _finish(what: str, out: Path, skipped: int, listed_in: str = "rejected.jsonl") -> int:
    """The closing line and exit status: 1 when any item was rejected (project rule), else 0."""
    main_process = os.environ.get("RANK", "0") == "0"  # one closing line under a launcher
    if skipped:
        if main_process:
            print(f"{what} complete in {out}, but {skipped} item(s) were rejected and skipped "
                  f"(reasons in {out}/{listed_in}): exit status 1")
        return 1
    if main_process:
        print(f"{what} complete in {out}: no item rejected")
    return 0


def refuse_settings_on_resume(args: argparse.Namespace) -> None:
    """``--resume RUN_DIR`` continues with RUN_DIR's saved config: settings given beside it
    would be silently ignored, so they are a usage error."""
    given = {"DATA_DIR": args.data_dir not in (None, args.resume), "--preset": bool(args.preset),
             "--config": bool(args.config), "--modality": bool(args.modality),
             "--set": bool(args.set), "--fold": args.fold is not None, "--out": bool(args.out),
             "--select-on-test": args.select_on_test, "--device": bool(getattr(args, "device", None)),
             "--save-last": bool(getattr(args, "save_last", False)),
             "--keep-checkpoints": getattr(args, "keep_checkpoints", None) is not None}
    flags = [flag for flag, present in given.items() if present]
    if flags:
        raise UsageError(f"{', '.join(flags)}: not applicable to --resume RUN_DIR, which continues "
                         "with its saved config.yaml; start a new --out for other settings")


@_guard
def cmd_train(args: argparse.Namespace) -> int:
    if args.resume is True and not args.out and args.data_dir and (Path(args.data_dir) / CONFIG_FILE).is_file():
        args.resume = args.data_dir  # foalnet train RUN_DIR --resume
    if isinstance(args.resume, str):  # foalnet train --resume RUN_DIR
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{run_dir}/{CONFIG_FILE} not found: not a run folder to resume")
        refuse_settings_on_resume(args)
        from foalnet.config import ExperimentConfig
        from foalnet.train.run import train_fold

        cfg = ExperimentConfig.load_yaml(run_dir / CONFIG_FILE)
        summary = train_fold(cfg, run_dir, resume=True)
        return _finish("training", run_dir, summary["skipped_items"])
    if not args.data_dir or args.fold is None or not args.out:
        raise UsageError("foalnet train needs DATA_DIR --fold K --out RUN_DIR (or --resume RUN_DIR)")
    require_manifest(args.data_dir)
    from foalnet.train.run import train_fold

    cfg = build_config(args)
    if args.resume:  # train_fold continues with the saved config: it must be this one
        from foalnet.train.cv import check_same_config

        check_same_config(Path(args.out), cfg)
    summary = train_fold(cfg, Path(args.out), resume=bool(args.resume))
    return _finish("training", Path(args.out), summary["skipped_items"])


@_guard
def cmd_cv(args: argparse.Namespace) -> int:
    require_manifest(args.data_dir)
    seeds = _parse_seeds(args.seeds, args.set)
    folds = _parse_folds(args.folds)
    from foalnet.train.cv import run_cv, run_seeds

    cfg = build_config(args)
    if seeds:
        summary = run_seeds(cfg, Path(args.out), seeds, folds=folds)
    else:
        summary = run_cv(cfg, Path(args.out), folds=folds)
    print(Path(args.out, "report.md").read_text() if Path(args.out, "report.md").is_file() else summary)
    return _finish("cross-validation", Path(args.out), summary["skipped_items"])


def refuse_row_settings(modality: str | None, overrides: list[str]) -> None:
    """Usage error for settings every ablation row sets itself (they would be silently ignored)."""
    from foalnet.train.ablate import ROW_FIELDS

    if modality:
        raise UsageError(f"--modality {modality} does not apply to ablate/demo: each row sets its "
                         "modality; choose rows with --rows (e.g. --rows audio_only,video_only)")
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    fixed = [k for k in keys if k in ROW_FIELDS]
    if fixed:
        raise UsageError(f"--set {', '.join(fixed)} does not apply to ablate/demo: each row sets "
                         f"{', '.join(ROW_FIELDS)}; choose rows with --rows")


@_guard
def cmd_ablate(args: argparse.Namespace) -> int:
    require_manifest(args.data_dir)
    from foalnet.train.ablate import ablation_markdown, run_ablation
    from foalnet.train.cv import rejected_ids

    refuse_row_settings(args.modality, args.set)
    seeds = _parse_seeds(args.seeds, args.set)
    cfg = build_config(args)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    results = run_ablation(cfg, Path(args.out), rows=rows, folds=_parse_folds(args.folds),
                           seeds=seeds)
    print(ablation_markdown(results))
    # an unreadable file fails in every row and fold that reads it: count it once
    skipped = len(set().union(*(rejected_ids(Path(args.out) / row / (f"seed{s}" if seeds else ""))
                                for row in results for s in (seeds or [None]))))
    return _finish("ablation", Path(args.out), skipped, listed_in="<row>/rejected.jsonl")


@_guard
def cmd_report(args: argparse.Namespace) -> int:
    from foalnet.train.report import write_report

    path = write_report(Path(args.dir), Path(args.out) if args.out else None)
    print(f"report written to {path}")
    return 0


def _parse_grid(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated numbers like 0.1,1,10") from None


@_guard
def cmd_svm(args: argparse.Namespace) -> int:
    require_manifest(args.data_dir)
    from foalnet.features.egemaps import EgemapsSettings
    from foalnet.train.svm import SvmSettings, run_svm_cv

    if args.sample_rate is not None and args.sample_rate <= 0:
        raise UsageError(f"--sample-rate {args.sample_rate}: must be a positive rate in Hz")
    settings = SvmSettings(speaker_norm=args.speaker_norm, c_grid=_parse_grid(args.c_grid, "--c-grid"),
                           gamma_grid=_parse_grid(args.gamma_grid, "--gamma-grid"),
                           inner_folds=args.inner_folds)
    summary = run_svm_cv(args.data_dir, Path(args.out), folds=_parse_folds(args.folds),
                         settings=settings, features=EgemapsSettings(sample_rate=args.sample_rate),
                         progress=not args.no_progress)
    print(Path(args.out, "report.md").read_text())
    return _finish("eGeMAPS SVM baseline", Path(args.out), summary["skipped_items"])


@_guard
def cmd_demo(args: argparse.Namespace) -> int:
    from foalnet.train.demo import run_demo

    refuse_row_settings(None, args.set)
    return run_demo(Path(args.out), size=args.size, seed=args.seed, rows=args.rows,
                    folds=_parse_folds(args.folds), overrides=args.set)


def register(subparsers: argparse._SubParsersAction) -> None:
    register_extract_audio(subparsers)
    train = subparsers.add_parser(
        "train", help="train one fold into RUN_DIR",
        description="Train on every fold but --fold (dev speakers held out of the training folds "
        "select the epoch), test on --fold, and write RUN_DIR: config.yaml, best/, metrics.csv, "
        "learning_curves.png, predictions.csv, summary.json. --resume continues a killed run.")
    _add_common(train, data_required=False)
    train.add_argument("--fold", type=int, help="test fold: a value of the manifest's fold field (IEMOCAP: the session 1..5)")
    train.add_argument("--out", metavar="RUN_DIR", help="output run folder")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                       help="continue the run in --out (or in RUN_DIR) from its last checkpoint")
    train.set_defaults(func=cmd_train)

    cv = subparsers.add_parser("cv", help="leave-one-fold-out cross-validation into CV_DIR/fold<K>/")
    _add_common(cv)
    cv.add_argument("--out", required=True, metavar="CV_DIR",
                    help="output folder: fold<K>/ per test fold, summary.json, report.md (re-run to resume)")
    cv.add_argument("--folds", metavar="1,2,...", help="only these folds (default: all)")
    cv.add_argument("--seeds", metavar="1,2,...",
                    help="one full CV per train.seed into CV_DIR/seed<S>/, summary over seeds")
    cv.set_defaults(func=cmd_cv)

    ablate = subparsers.add_parser("ablate", help="paper Table 2 rows through cv")
    _add_common(ablate)
    ablate.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: <row>/ per row, ablation.md, ablation.json (re-run to resume)")
    ablate.add_argument("--folds", metavar="1,2,...", help="only these folds (default: all)")
    ablate.add_argument("--rows", metavar="ROW,...",
                        help="only these rows, from: audio_only, video_only, baseline, baseline+avel, "
                        "baseline+mem, full, egemaps_svm (default: all seven)")
    ablate.add_argument("--seeds", metavar="1,2,...",
                        help="each row one CV per train.seed (DIR/<row>/seed<S>/), std over seeds")
    ablate.set_defaults(func=cmd_ablate)

    report = subparsers.add_parser(
        "report", help="one self-contained HTML report of a run, CV, seeds or ablation folder")
    report.add_argument("dir", metavar="DIR", help="a run, cv, seeds or ablation output folder")
    report.add_argument("--out", metavar="FILE.html", help="output file (default: DIR/report.html)")
    report.set_defaults(func=cmd_report)

    svm = subparsers.add_parser(
        "svm", help="classical baseline: eGeMAPS functionals + RBF-SVM on the folds of cv")
    svm.add_argument("data_dir", metavar="DATA_DIR", help="prepared data folder")
    svm.add_argument("--out", required=True, metavar="DIR",
                     help="output folder (summary.json, report.md, per-fold predictions, confusion plot)")
    svm.add_argument("--folds", metavar="1,2,...", help="only these test folds (default: all)")
    svm.add_argument("--speaker-norm", action="store_true",
                     help="z-normalise each speaker's features with its own mean/std (no labels)")
    svm.add_argument("--c-grid", default="0.1,0.3,1,3,10,30",
                     help="SVM C candidates, chosen per fold on the training speakers")
    svm.add_argument("--gamma-grid", default="0.25,1,4",
                     help="RBF gamma candidates as multiples of 1/n_features")
    svm.add_argument("--inner-folds", type=int, default=5,
                     help="speaker-grouped inner CV folds for choosing C/gamma (default 5)")
    svm.add_argument("--sample-rate", type=int, metavar="HZ",
                     help="resample the audio to this rate first (default: each file's own rate)")
    svm.add_argument("--no-progress", action="store_true", help="no progress bar")
    svm.set_defaults(func=cmd_svm)

    demo = subparsers.add_parser(
        "demo", help="offline end to end: synth -> prepare -> extract-visual tiny -> cv tiny -> table")
    demo.add_argument("--out", required=True, metavar="DIR",
                      help="output folder (the synthetic corpus, its DATA_DIR and the ablation)")
    demo.add_argument("--size", default="small", choices=("tiny", "small", "medium"),
                      help="synthetic corpus size (default: small)")
    demo.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    demo.add_argument("--rows", default="full,audio_only,video_only",
                      help="ablation rows to run (default: full,audio_only,video_only)")
    demo.add_argument("--folds", metavar="1,2,...", help="only these folds (default: all 5)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a tiny-preset field, e.g. train.epochs=4")
    demo.set_defaults(func=cmd_demo)


# ------------------------------------------------- extract-audio (the model's front end, cached)
def run_extract_audio(args: argparse.Namespace) -> int:
    """0 all cached, 1 some items failed (listed in rejected.jsonl), 2 usage/setup error."""
    from foalnet.data.manifest import read_manifest
    from foalnet.features.audio_cache import build_audio_cache
    from foalnet.features.base import FeatureError
    import torch

    from foalnet.features.workers import Workers
    from foalnet.model.foalnet import FoalNet
    from foalnet.features.commands import _report

    if not (Path(args.data_dir) / "manifest.jsonl").is_file():
        log.error("%s: no manifest.jsonl; run `foalnet prepare ...` first", args.data_dir)
        return 2
    workers = Workers.from_env()
    try:
        cfg = build_config(args)
        torch.manual_seed(cfg.train.seed)  # as train_fold: a random-init front end gets training's weights
        model = FoalNet(cfg.model).to(workers.device(args.device))
        store, report = build_audio_cache(args.data_dir, model, read_manifest(args.data_dir),
                                          progress=not args.no_progress, workers=workers)
    except (FeatureError, UsageError, OSError) as err:
        log.error("%s", err)
        return 2
    finally:
        workers.close()
    return _report(report, store.root / "rejected.jsonl", workers.is_main)


def register_extract_audio(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract-audio",
        help="run the audio encoder's fixed front end (frozen CNN / DSP features) once per utterance (cached)",
        description="Compute the audio encoder's frozen front end for every utterance and cache float32 "
        "[T, C] arrays in DATA_DIR/audio_frontend/<slug>/, so training does not recompute it every "
        "step (the same function). `foalnet train` / `cv` do this themselves when data.cache_audio "
        "is on (the default); run it on its own to fill the cache on a GPU first. Re-running "
        "reuses what is done; exit 1 if any item failed.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="a prepared data folder")
    p.add_argument("--preset", default="paper", choices=("paper", "tiny"),
                   help="whose audio encoder (default: paper = WavLM-Large's CNN)")
    p.add_argument("--config", metavar="FILE.yaml", help="take the audio encoder from this experiment YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. model.audio_encoder=/models/wavlm-large")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract_audio)
