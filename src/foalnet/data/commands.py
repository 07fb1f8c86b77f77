"""CLI of the data stage: ``foalnet synth`` and ``foalnet prepare {iemocap,scp,csv,cremad,...}``.

A new corpus is one module with NAME, HELP, add_arguments(parser), options(args) and
build(args) -> Prepared, plus one line in ``CORPORA``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import time
from pathlib import Path

from foalnet.data.manifest import (existing_preparation, read_rejected,
                                   reject_same_audio, report_rejections, save_preparation)
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

CORPORA = (
    "foalnet.data.iemocap",
    "foalnet.data.scp",
    "foalnet.data.csv_corpus",
    "foalnet.data.cremad", "foalnet.data.ravdess", "foalnet.data.msp_improv", "foalnet.data.meld",
)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare one corpus into --out; 0 ok, 1 something rejected, 2 usage/consistency error."""
    module = importlib.import_module(args.corpus_module)
    try:
        options = module.options(args)
        if not args.force:
            meta = existing_preparation(args.out, module.NAME, options)
            if meta is not None:
                log.info("%s already prepared with these options (%d utterances, %d rejected); "
                         "use --force to redo", args.out, meta["counts"]["total"], meta["rejected"])
                return 1 if read_rejected(args.out) else 0
        prepared = module.build(args)
        # every corpus: no audio twice (csv already rejects repeats per row, naming the rows)
        prepared.records, repeats = reject_same_audio(prepared.records)
        prepared.rejections.extend(repeats)
        meta = save_preparation(args.out, prepared.corpus, prepared.classes, prepared.labels,
                                prepared.records, prepared.rejections, options)
    except (UsageError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    report_rejections(prepared.rejections)
    log.info("prepared %s: %d utterances %s, folds %s, %d rejected (see %s)", args.out,
             meta["counts"]["total"], meta["counts"]["labels"], meta["folds"], meta["rejected"],
             Path(args.out) / "rejected.jsonl")
    return 1 if prepared.rejections else 0


def run_synth(args: argparse.Namespace) -> int:
    from foalnet.data.synth import SIZES, generate

    if args.size not in SIZES:
        log.error("unknown size %r", args.size)
        return 2
    t0 = time.perf_counter()
    summary = generate(args.out_dir, seed=args.seed, size=args.size, workers=args.workers)
    log.info("wrote %s: %d utterances (%d four-class) in %d dialogs, %.1f s",
             summary["root"], summary["utterances"], summary["four_class"], summary["dialogs"],
             time.perf_counter() - t0)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser(
        "synth", help="write an offline corpus shaped like IEMOCAP_full_release")
    synth.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                       help="folder that receives IEMOCAP_full_release/ (created)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the corpus (default 0)")
    synth.add_argument("--size", default="small", choices=("tiny", "small", "medium"),
                       help="tiny (tests), small (default, >= 200 four-class), medium")
    synth.add_argument("--workers", type=int, default=None,
                       help="processes (default: min(2, CPUs)); output does not depend on it")
    synth.set_defaults(func=run_synth)

    prepare = subparsers.add_parser("prepare", help="corpus -> DATA_DIR/manifest.jsonl")
    kinds = prepare.add_subparsers(dest="corpus", metavar="CORPUS", required=True,
                                   help="the corpus layout to read (foalnet prepare CORPUS --help)")
    for module_name in CORPORA:
        module = importlib.import_module(module_name)
        sub = kinds.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.add_argument("--out", type=Path, required=True, metavar="DATA_DIR",
                         help="prepared folder to write (manifest.jsonl, prepare.json, rejected.jsonl)")
        sub.add_argument("--force", action="store_true", help="redo even if already prepared")
        sub.set_defaults(func=run_prepare, corpus_module=module_name)
