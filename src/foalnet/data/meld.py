"""MELD (Poria et al., ACL 2019; github.com/declare-lab/MELD) -> manifest records.

Layout of ``MELD.Raw`` (the declare-lab README: annotations ``data/MELD/{train,dev,test}_sent_emo.csv``,
clips in the release's tarballs, one mp4 per utterance named ``dia{Dialogue_ID}_utt{Utterance_ID}``)::

    {train,dev,test}_sent_emo.csv        at ROOT or ROOT/<split>/
    train_splits/                        train clips   (at ROOT or ROOT/train/)
    dev_splits_complete/                 dev clips     (at ROOT or ROOT/dev/)
    output_repeated_splits_test/         test clips    (at ROOT or ROOT/test/)

CSV columns: Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season,
Episode, StartTime, EndTime; emotions neutral, joy, sadness, anger, surprise, fear, disgust
(joy is the happy class ``hap``). The README counts 9989 / 1109 / 2610 utterances (13708).
Dialogue ids restart in every split, so ids are ``<split>_dia<D>_utt<U>``. Audio is the clip's
own track; the whole clip is the item (StartTime/EndTime index the episode, not the clip).

Protocol: the official partition, kept in each record's ``partition`` field (fold 1 train,
2 dev, 3 test): ``cv`` has the one test fold, dev is the official dev split
(``protocol.split_fold``). NOT speaker-independent: the main characters speak in every split.
Frames hold several people: ``--crop face`` takes the largest face (``video.FaceCropper``).
"""
from __future__ import annotations

import argparse
import csv
import logging
from collections import Counter
from pathlib import Path

from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import CORPUS_CLASS_SETS, OWN_CLASSES, PARTITIONS, corpus_labels
from foalnet.data.video import media_problem
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

NAME = "meld"
HELP = "MELD.Raw ({train,dev,test}_sent_emo.csv + clip folders) -> manifest, official split"

EMOTIONS = {"neutral": "neu", "joy": "hap", "sadness": "sad", "anger": "ang", "surprise": "sur",
            "fear": "fea", "disgust": "dis"}
NAMES = list(EMOTIONS.values())
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete",
             "test": "output_repeated_splits_test"}
FOLD = {"train": 1, "dev": 2, "test": 3}
REQUIRED = ("Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
OFFICIAL = {"train": 9989, "dev": 1109, "test": 2610}
PROTOCOL = ("official MELD train/dev/test split, NOT speaker-independent (its speakers recur "
            "across the splits)")


def _first_existing(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"no {what}: looked for {', '.join(map(str, candidates))}")


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(label csv, clip folder) of a split, at ROOT or ROOT/<split>/."""
    csv_path = _first_existing([root / f"{split}_sent_emo.csv",
                                root / split / f"{split}_sent_emo.csv"], f"{split} labels")
    clips = _first_existing([root / CLIP_DIRS[split], root / split / CLIP_DIRS[split]],
                            f"{split} clip folder")
    return csv_path, clips


def read_split(csv_path: Path) -> list[tuple[int, dict]]:
    """(line, row) of a split's CSV; a missing column is a usage error (ValueError)."""
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{csv_path}: missing column(s) {missing}")
        return list(enumerate(reader, 2))


def row_item(row: dict, split: str) -> tuple[str, str, str]:
    """(item id, clip file name, label) of a row; ValueError naming the bad value."""
    dialog, utt = row["Dialogue_ID"].strip(), row["Utterance_ID"].strip()
    if not (dialog.isdigit() and utt.isdigit()):
        raise UsageError(f"Dialogue_ID {dialog!r} / Utterance_ID {utt!r} are not numbers")
    emotion = row["Emotion"].strip().lower()
    if emotion not in EMOTIONS:
        raise UsageError(f"label {emotion!r} outside {sorted(EMOTIONS)}")
    if not row["Speaker"].strip():
        raise UsageError("empty Speaker")
    stem = f"dia{int(dialog)}_utt{int(utt)}"
    return f"{split}_{stem}", f"{stem}.mp4", EMOTIONS[emotion]


def to_record(utt_id: str, label: str, row: dict, split: str, clip: Path) -> dict:
    return make_record(
        id=utt_id, label=label, corpus=NAME, session=None, speaker=row["Speaker"].strip(),
        gender=None, dialog=f"{split}_dia{int(row['Dialogue_ID'])}", wav=str(clip.resolve()),
        video=str(clip.resolve()), side="full", fold=FOLD[split],
        extra={"partition": split, "sentiment": row.get("Sentiment", "").strip() or None})


def prepare_split(root: Path, split: str, wanted: list[str]
                  ) -> tuple[list[dict], list[Rejection], Counter, int]:
    """Records of one split, its rejections, labels dropped by the class set, CSV rows."""
    csv_path, clip_dir = split_paths(root, split)
    rows = read_split(csv_path)
    records, rejections, dropped, listed = [], [], Counter(), set()
    for lineno, row in rows:
        where = f"{csv_path.name}:{lineno}"
        try:
            utt_id, file_name, label = row_item(row, split)
        except ValueError as err:
            rejections.append(Rejection(where, str(csv_path), f"{where}: {err}"))
            continue
        listed.add(file_name)
        if label not in wanted:
            dropped[label] += 1
            continue
        clip = clip_dir / file_name
        problem = media_problem(clip, clip)
        if problem:
            rejections.append(Rejection(utt_id, problem[0], f"{where}: {problem[1]}"))
            continue
        records.append(to_record(utt_id, label, row, split, clip))
    unlisted = sum(1 for p in clip_dir.glob("*.mp4") if p.name not in listed)
    if unlisted:
        log.info("MELD %s: %d mp4 files in %s have no label row (not items)", split, unlisted,
                 clip_dir)
    return records, rejections, dropped, len(rows)


def build_meld(root: str | Path, classes: str = OWN_CLASSES) -> Prepared:
    """All three splits -> records, fold = split; every bad row is a rejection with its line."""
    root, wanted = Path(root), corpus_labels(NAMES, classes)
    records, rejections = [], []
    for split in PARTITIONS:
        recs, rej, dropped, n_rows = prepare_split(root, split, wanted)
        records += recs
        rejections += rej
        log.info("MELD %s: %d rows (the README counts %d), %d kept for classes %r, dropped by "
                 "the class set %s", split, n_rows, OFFICIAL[split], len(recs), classes,
                 dict(dropped))
    log.warning("MELD protocol: %s", PROTOCOL)
    return Prepared(NAME, classes, wanted, records, rejections)


# --- CLI hooks (registered by foalnet.data.commands) -----------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the MELD.Raw folder")
    parser.add_argument("--classes", default=OWN_CLASSES, choices=CORPUS_CLASS_SETS,
                        help="all: its 7 emotions (default); 4: neu/hap(joy)/sad/ang only")


def options(args: argparse.Namespace) -> dict:
    return {"root": str(args.root.resolve()), "classes": args.classes, "protocol": PROTOCOL}


def build(args: argparse.Namespace) -> Prepared:
    return build_meld(args.root, args.classes)
