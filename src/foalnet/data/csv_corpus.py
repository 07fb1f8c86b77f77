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
from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import IEMOCAP_LABELS, speaker_folds

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
        raise ValueError(f"{column} {value!r} is not a number") from err


def read_rows(csv_path: Path) -> list[dict]:
    """The CSV rows; a missing required column is a usage error (ValueError)."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; have {columns}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _row_id(row: dict, index: int, used: set[str]) -> str:
    utt_id = row.get("id") or Path(row["path"]).with_suffix("").as_posix().replace("/", "_")
    if utt_id in used:
        utt_id = f"{utt_id}_{index}"
    used.add(utt_id)
    return utt_id


def _row_record(row: dict, utt_id: str, root: Path, labels: list[str]) -> dict:
    """One manifest record, or ValueError/AudioError explaining why the row is unusable."""
    if row["label"] not in labels:
        raise ValueError(f"label {row['label']!r} outside the set {labels}")
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
    if records and all(r["session"] is not None for r in records):
        for r in records:
            r["fold"] = r["session"]
        return
    mapping = speaker_folds(dict(Counter(r["speaker"] for r in records)), k)
    for r in records:
        r["fold"] = mapping[r["speaker"]]


def default_label_order(found: set[str]) -> list[str]:
    """IEMOCAP's logit order (neu, hap, sad, ang) when the CSV uses only those names, so models
    of any corpus line up with the paper's and imported ones; otherwise sorted."""
    if found <= set(IEMOCAP_LABELS):
        return [c for c in IEMOCAP_LABELS if c in found]
    return sorted(found)


def build_csv(csv_path: str | Path, root: str | Path | None = None, folds: int = 5,
              labels: list[str] | None = None) -> Prepared:
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    rows = read_rows(csv_path)
    label_order = labels or default_label_order({r["label"] for r in rows if r["label"]})
    records, rejections, used = [], [], set()
    for index, row in enumerate(rows, 2):  # line 1 is the header
        utt_id = _row_id(row, index, used)
        try:
            records.append(_row_record(row, utt_id, root, label_order))
        except AudioError as err:
            rejections.append(Rejection(utt_id, err.path, err.reason))
        except ValueError as err:
            rejections.append(Rejection(utt_id, str(root / row["path"]), str(err)))
    _assign_folds(records, folds)
    return Prepared(NAME, None, label_order, records, rejections)


# --- CLI hooks --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels_csv", type=Path, metavar="LABELS.csv")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder the CSV paths are relative to (default: the CSV's folder)")
    parser.add_argument("--folds", type=int, default=5,
                        help="speaker-disjoint folds when there is no session column (default 5)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated label set and logit order (default: neu,hap,sad,ang "
                             "order for those names, else the CSV's labels sorted); other labels "
                             "are rejected")


def _labels(args: argparse.Namespace) -> list[str] | None:
    return [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None


def options(args: argparse.Namespace) -> dict:
    root = args.root if args.root is not None else args.labels_csv.parent
    return {"csv": str(args.labels_csv.resolve()), "root": str(root.resolve()),
            "folds": args.folds, "labels": _labels(args)}


def build(args: argparse.Namespace) -> Prepared:
    return build_csv(args.labels_csv, args.root, args.folds, _labels(args))
