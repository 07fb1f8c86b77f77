"""Any corpus as a CSV: ``path,label,speaker[,session][,video][,start][,end]`` (+ optional ``id``).

``path`` (relative to --root) is a wav, another audio file, or a video with an audio track.
``start``/``end`` (seconds) select a span of the media; they index the same timeline in
``path`` and ``video``. ``video`` defaults to ``path`` when that file has a video stream.
Folds: the session when given, else K speaker-disjoint folds balanced by utterance count.
"""
from __future__ import annotations

import argparse
import csv
import logging
from collections import Counter
from pathlib import Path

from foalnet.data.audio import SPAN_TOLERANCE, AudioError, audio_info
from foalnet.data.manifest import Prepared, Rejection, make_record, reject_same_audio
from foalnet.data.protocol import IEMOCAP_LABELS, speaker_folds
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

NAME = "csv"
HELP = "any corpus listed as path,label,speaker[,session][,video][,start][,end]"
REQUIRED_COLUMNS = ("path", "label", "speaker")


def _has_video_stream(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except Exception:  # not a container PyAV knows: treat as audio only
        return False


def _float_or_none(value: str | None, column: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError as err:
        raise UsageError(f"{column} {value!r} is not a number") from err


def read_rows(csv_path: Path) -> list[dict]:
    """The CSV rows; a missing required column is a usage error (ValueError)."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise UsageError(f"{csv_path}: missing column(s) {missing}; have {columns}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _row_id(row: dict, index: int, used: set[str]) -> str:
    utt_id = row.get("id") or Path(row["path"]).with_suffix("").as_posix().replace("/", "_")
    if utt_id in used:
        utt_id = f"{utt_id}_{index}"
    used.add(utt_id)
    return utt_id


def _row_record(row: dict, utt_id: str, root: Path, labels: list[str] | None) -> dict:
    """One manifest record, or ValueError/AudioError explaining why the row is unusable.

    ``labels`` None: any non-empty label (the class set is then decided from the kept rows)."""
    if not row["label"]:
        raise UsageError("empty label")
    if labels is not None and row["label"] not in labels:
        raise UsageError(f"label {row['label']!r} outside the set {labels}")
    if not row["speaker"]:
        raise UsageError("empty speaker: folds and the dev split keep speakers apart, so every "
                         "row needs its speaker id")
    media = (root / row["path"]).resolve()
    start = _float_or_none(row.get("start"), "start")
    end = _float_or_none(row.get("end"), "end")
    info = audio_info(media)
    if (start is not None and (start < 0 or start >= info.duration)) or (
            end is not None and (end > info.duration + SPAN_TOLERANCE
                                 or end <= (start or 0.0))):
        raise AudioError(media, f"span [{start}, {end}] s outside the file ({info.duration:.3f} s)")
    video = None
    if row.get("video"):
        video = (root / row["video"]).resolve()
        if not video.is_file():
            raise AudioError(video, "missing video")
    elif _has_video_stream(media):
        video = media
    session = row.get("session") or None
    return make_record(
        id=utt_id, label=row["label"], corpus=NAME,
        session=int(session) if session is not None else None, speaker=row["speaker"],
        gender=row.get("gender") or None, dialog=None, wav=str(media), audio_start=start,
        audio_end=end, video=str(video) if video else None,
        start=start if video else None, end=end if video else None,
        side=(row.get("side") or "full") if video else None, fold=0)


def _assign_folds(records: list[dict], k: int) -> None:
    """fold = session when every record has one, else K speaker-disjoint balanced folds."""
    if not records:  # every row rejected: nothing to split (the rejections say why)
        return
    if records and all(r["session"] is not None for r in records):
        for r in records:
            r["fold"] = r["session"]
        return
    mapping = speaker_folds(dict(Counter(r["speaker"] for r in records)), k)
    for r in records:
        r["fold"] = mapping[r["speaker"]]


def default_label_order(found: set[str]) -> list[str]:
    """The logit order without --labels: IEMOCAP's (neu, hap, sad, ang) when the CSV uses only
    those names, so models of any corpus line up with the paper's and imported ones; otherwise
    sorted by name. Either way it is printed; --labels fixes it explicitly."""
    if found <= set(IEMOCAP_LABELS):
        return [c for c in IEMOCAP_LABELS if c in found]
    return sorted(found)


def thin_classes(records: list[dict]) -> dict[str, list[int]]:
    """``{class: its folds}`` for classes held by fewer than 2 folds: with that fold as the
    test fold the class has no training item, so that fold's model never learns its logit."""
    folds: dict[str, set[int]] = {}
    for r in records:
        folds.setdefault(r["label"], set()).add(r["fold"])
    return {label: sorted(f) for label, f in sorted(folds.items()) if len(f) < 2}


def _reject_thin_classes(records: list[dict], k: int, where: dict[str, str]
                         ) -> tuple[list[dict], list[Rejection]]:
    """Without --labels: drop the rows of classes that cannot be in every training fold (folds
    are re-assigned after each drop, as they depend on the counts), each with its reason."""
    rejections: list[Rejection] = []
    _assign_folds(records, k)
    while records and (thin := thin_classes(records)):
        counts = Counter(r["label"] for r in records)
        for r in (r for r in records if r["label"] in thin):
            rejections.append(Rejection(r["id"], r["wav"], (
                f"{where[r['id']]}: class {r['label']!r} has {counts[r['label']]} item(s), all in "
                f"fold(s) {thin[r['label']]}: a training fold without it never learns it; add "
                "items of other speakers, or keep it anyway by listing it in --labels")))
        records = [r for r in records if r["label"] not in thin]
        _assign_folds(records, k)
    return records, rejections


def _warn_thin_classes(records: list[dict], labels: list[str]) -> None:
    """With --labels: the user chose the set; say which logits some fold's model never trains."""
    present = {r["label"] for r in records}
    for label, folds in thin_classes(records).items():
        log.warning("class %r is in fold(s) %s only: the model tested on it has no training item "
                    "of that class", label, folds)
    for label in (x for x in labels if x not in present):
        log.warning("class %r of --labels has no item", label)


def class_summary(records: list[dict], labels: list[str], chosen: bool) -> str:
    """The class set, its logit order with counts, and where the order came from."""
    counts = Counter(r["label"] for r in records)
    rule = ("as given by --labels" if chosen else
            "no --labels: IEMOCAP names in the paper's order neu, hap, sad, ang when only those "
            "occur, otherwise sorted by name; pass --labels to choose")
    listed = ", ".join(f"{i}={label} ({counts.get(label, 0)})" for i, label in enumerate(labels))
    return f"classes in logit order ({rule}): {listed}"


def build_csv(csv_path: str | Path, root: str | Path | None = None, folds: int = 5,
              labels: list[str] | None = None) -> Prepared:
    """Rows -> records; bad rows, repeated audio and (without --labels) classes that cannot be in
    every training fold are rejected per row, each reason naming ``<csv>:<line>``."""
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    rows = read_rows(csv_path)
    records, rejections, used, where = [], [], set(), {}
    for index, row in enumerate(rows, 2):  # line 1 is the header
        utt_id = _row_id(row, index, used)
        where[utt_id] = f"{csv_path.name}:{index}"
        try:
            records.append(_row_record(row, utt_id, root, labels))
        except AudioError as err:
            rejections.append(Rejection(utt_id, err.path, f"{where[utt_id]}: {err.reason}"))
        except ValueError as err:
            rejections.append(Rejection(utt_id, str(root / row["path"]), f"{where[utt_id]}: {err}"))
    records, repeats = reject_same_audio(records, where)
    rejections += repeats
    if labels is None:
        records, thin = _reject_thin_classes(records, folds, where)
        rejections += thin
    else:
        _assign_folds(records, folds)
        _warn_thin_classes(records, labels)
    label_order = labels or default_label_order({r["label"] for r in records})
    log.info("%s: %s", csv_path, class_summary(records, label_order, labels is not None))
    return Prepared(NAME, None, label_order, records, rejections)


# --- CLI hooks --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels_csv", type=Path, metavar="LABELS.csv",
                        help="one row per clip: path,label,speaker[,session][,video][,start][,end] (paths relative to --root)")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder the CSV paths are relative to (default: the CSV's folder)")
    parser.add_argument("--num-folds", dest="folds", metavar="K", type=int, default=5,
                        help="speaker-disjoint folds when there is no session column (default 5)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated label set and logit order; other labels are "
                             "rejected. Default: the CSV's labels, in the order neu,hap,sad,ang "
                             "when only those occur, else sorted; a label held by fewer than 2 "
                             "folds is then rejected (list it here to keep it)")


def _labels(args: argparse.Namespace) -> list[str] | None:
    return [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None


def options(args: argparse.Namespace) -> dict:
    root = args.root if args.root is not None else args.labels_csv.parent
    return {"csv": str(args.labels_csv.resolve()), "root": str(root.resolve()),
            "folds": args.folds, "labels": _labels(args)}


def build(args: argparse.Namespace) -> Prepared:
    return build_csv(args.labels_csv, args.root, args.folds, _labels(args))
