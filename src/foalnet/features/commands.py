"""CLI of the features stage: ``foalnet extract-visual DATA_DIR``. (``extract-audio`` runs the
model's front end with a resolved config, so ``train/commands.py`` registers it.)

Under a launcher (``accelerate launch --num_processes N -m foalnet extract-visual ...``,
``torchrun --nproc_per_node N -m foalnet ...``) each process extracts its share of the manifest
(``features/workers.py``); the main process prints the merged report, every process exits with
its status."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

PAPER_ENCODER = "openai/clip-vit-large-patch14"


def run_extract_visual(args: argparse.Namespace) -> int:
    """0 all served, 1 some items failed (listed in rejected.jsonl), 2 usage/setup error."""
    from foalnet.features.base import FeatureError, build_visual_encoder
    from foalnet.features.extract import extract_visual
    from foalnet.features.workers import Workers

    if args.batch_size < 1 or (args.fps is not None and args.fps <= 0):
        log.error("--batch-size must be >= 1 and --fps > 0")
        return 2
    if not (Path(args.data_dir) / "manifest.jsonl").is_file():
        log.error("%s: no manifest.jsonl; run `foalnet prepare ...` first", args.data_dir)
        return 2
    workers = Workers.from_env()
    try:
        encoder = build_visual_encoder(args.encoder, device=workers.device(args.device))
    except Exception as err:  # hub/network/format errors all mean "cannot use this encoder"
        log.error("cannot load visual encoder %r: %s: %s", args.encoder, type(err).__name__, err)
        return 2
    try:
        report = extract_visual(args.data_dir, encoder, crop=args.crop,
                                batch_size=args.batch_size, fps=args.fps,
                                progress=not args.no_progress, workers=workers)
    except (FeatureError, UsageError, ImportError) as err:
        log.error("%s", err)
        return 2
    finally:
        workers.close()
    return _report(report, Path(args.data_dir) / "visual" / report.slug / "rejected.jsonl", workers.is_main)


def _report(report, rejected_path: Path, main_process: bool = True) -> int:
    """Print an extraction report; exit status 1 when any item failed (listed in rejected_path)."""
    if main_process:
        print(report.summary())
        if report.failed:
            print(f"{report.failed} failed: see {rejected_path}")
    return 1 if report.failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    register_extract_visual(subparsers)


def register_extract_visual(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract-visual",
        help="embed every video frame of each utterance with a frozen image encoder (cached)",
        description="Decode each dialog video once, crop the speaker's half (or full frame / "
        "face), embed every frame and cache float16 [T, D] arrays in DATA_DIR/visual/<slug>/. "
        "Re-running reuses what is done; exit 1 if any item failed.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="a prepared data folder")
    p.add_argument("--encoder", default=PAPER_ENCODER,
                   help=f"'tiny' (offline) or a CLIP hub id / local folder (default {PAPER_ENCODER})")
    p.add_argument("--crop", default="side", choices=("side", "full", "face", "left", "right"),
                   help="side: the speaker's half from the manifest (IEMOCAP); full: whole frame; "
                   "face: face box in the speaker's half (needs `pip install foalnet[face]`)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per encoder call")
    p.add_argument("--device", default="cpu", help="torch device for CLIP (cpu, cuda, cuda:1)")
    p.add_argument("--fps", type=float, default=None,
                   help="resample frames to this rate (default: the file's own rate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract_visual)
