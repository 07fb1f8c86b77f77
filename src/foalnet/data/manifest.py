"""The prepared-data contract: DATA_DIR/{manifest.jsonl, prepare.json, rejected.jsonl}.

Every corpus preparer produces plain records with the fields of ``MANIFEST_FIELDS`` and
``Rejection`` items; this module writes them atomically, reads them back, and decides whether
an existing preparation can be reused (idempotent ``prepare``).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from foalnet.data.files import write_text_atomic
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
PREPARE_META_NAME = "prepare.json"
REJECTED_NAME = "rejected.jsonl"

# Field order of one manifest line (docs/ARCHITECTURE.md, "data/ -> manifest").
MANIFEST_FIELDS = (
    "id", "label", "corpus", "session", "speaker", "gender", "dialog", "wav",
    "audio_start", "audio_end", "video", "start", "end", "side", "fold",
)


class ManifestError(UsageError):
    """A prepared DATA_DIR is missing, malformed or inconsistent with itself."""


@dataclass(frozen=True)
class Rejection:
    """One bad input item: reported on the console and in rejected.jsonl."""

    id: str
    path: str
    reason: str


def make_record(extra: dict[str, Any] | None = None, **fields: Any) -> dict:
    """A manifest record with every contract field present (missing ones are None).

    ``extra``: corpus-specific fields (RAVDESS intensity, MELD partition, ...) appended after
    the contract fields; readers ignore what they do not know, so a typo in a contract field
    is still an error while a corpus can keep what its names say."""
    unknown = set(fields) - set(MANIFEST_FIELDS)
    if unknown:
        raise UsageError(f"unknown manifest fields: {sorted(unknown)}")
    clash = set(extra or {}) & set(MANIFEST_FIELDS)
    if clash:
        raise UsageError(f"extra fields {sorted(clash)} are contract fields")
    return {**{name: fields.get(name) for name in MANIFEST_FIELDS}, **(extra or {})}


# Two items whose spans of one file overlap by more than this (s) hold the same audio.
SAME_AUDIO_OVERLAP = 0.05


def _audio_span(record: dict) -> tuple[float, float]:
    start, end = record.get("audio_start"), record.get("audio_end")
    return (start or 0.0, float("inf") if end is None else end)


def same_audio(a: dict, b: dict) -> bool:
    """Whether two records hold the same audio: one file, overlapping spans (None = whole file).

    The same audio in two items could land in a training and a test fold, so a manifest never
    holds it twice; distinct spans of one file (utterances of a dialog) are distinct items."""
    if a["wav"] != b["wav"]:
        return False
    (s1, e1), (s2, e2) = _audio_span(a), _audio_span(b)
    return min(e1, e2) - max(s1, s2) > SAME_AUDIO_OVERLAP


def earlier_same_audio(records: list[dict]) -> dict[int, int]:
    """``{index: index of the first earlier record with the same audio}`` (empty: no repeat)."""
    kept_by_wav: dict[str, list[int]] = {}
    out = {}
    for i, record in enumerate(records):
        kept = kept_by_wav.setdefault(record["wav"], [])
        first = next((j for j in kept if same_audio(records[j], record)), None)
        if first is None:
            kept.append(i)
        else:
            out[i] = first
    return out


def _span_text(record: dict) -> str:
    if record.get("audio_start") is None and record.get("audio_end") is None:
        return "the whole file"
    return f"span [{record.get('audio_start')}, {record.get('audio_end')}] s"


def reject_same_audio(records: list[dict], where: dict[str, str] | None = None
                      ) -> tuple[list[dict], list[Rejection]]:
    """Keep the first record of each audio; reject every later one naming the first.

    ``where``: id -> source location (e.g. ``labels.csv:7``) to put in the reason."""
    where = where or {}
    repeats = earlier_same_audio(records)
    kept = [r for i, r in enumerate(records) if i not in repeats]
    rejections = []
    for i, first in sorted(repeats.items()):
        r, f = records[i], records[first]
        here = f"{where[r['id']]}: " if r["id"] in where else ""
        there = f" at {where[f['id']]}" if f["id"] in where else ""
        rejections.append(Rejection(r["id"], r["wav"], (
            f"{here}same audio as item {f['id']!r}{there} ({_span_text(r)} vs {_span_text(f)} of "
            "this file): one recording may be one item only, or it could be trained and tested on")))
    return kept, rejections


def _check_no_same_audio(records: list[dict], where: str) -> None:
    repeats = earlier_same_audio(records)
    if repeats:
        i, first = next(iter(repeats.items()))
        raise ManifestError(f"{where}: items {records[first]['id']!r} and {records[i]['id']!r} "
                            f"hold the same audio ({records[i]['wav']})")


def write_manifest(data_dir: str | Path, records: Iterable[dict]) -> Path:
    path = Path(data_dir) / MANIFEST_NAME
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def write_rejected(data_dir: str | Path, rejections: Iterable[Rejection]) -> Path:
    path = Path(data_dir) / REJECTED_NAME
    lines = [json.dumps(asdict(r), ensure_ascii=False) for r in rejections]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def write_prepare_meta(data_dir: str | Path, meta: dict) -> Path:
    path = Path(data_dir) / PREPARE_META_NAME
    write_text_atomic(path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file; a bad line raises ManifestError naming file and line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
    return out


def require_manifest(data_dir: str | Path) -> Path:
    """DATA_DIR/manifest.jsonl, or ManifestError naming it (cheap: commands check before torch)."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; run `foalnet prepare ...` first")
    return path


def read_manifest(data_dir: str | Path) -> list[dict]:
    """All records of DATA_DIR/manifest.jsonl, in file order."""
    path = require_manifest(data_dir)
    records = read_jsonl(path)
    missing = [f for f in ("id", "label", "wav", "fold") if records and f not in records[0]]
    if missing:
        raise ManifestError(f"{path}: records lack the fields {missing}")
    return records


def read_prepare_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / PREPARE_META_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no prepare.json; run `foalnet prepare ...` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err.msg})") from err


def read_rejected(data_dir: str | Path) -> list[dict]:
    path = Path(data_dir) / REJECTED_NAME
    return read_jsonl(path) if path.is_file() else []


def build_meta(corpus: str, classes: str | None, labels: list[str], records: list[dict],
               options: dict, n_rejected: int) -> dict:
    """prepare.json content: label order, counts (per label, per fold) and the options used."""
    folds = sorted({r["fold"] for r in records})
    label_counts = Counter(r["label"] for r in records)
    fold_counts = Counter(r["fold"] for r in records)
    return {
        "corpus": corpus,
        "classes": classes,
        "labels": list(labels),
        "counts": {
            "total": len(records),
            "labels": {lab: label_counts.get(lab, 0) for lab in labels},
            "folds": {str(f): fold_counts[f] for f in folds},
        },
        "folds": folds,
        "rejected": n_rejected,
        "options": options,
    }


def check_consistency(data_dir: str | Path) -> dict:
    """Verify that manifest.jsonl agrees with prepare.json; return the meta or raise."""
    meta = read_prepare_meta(data_dir)
    records = read_manifest(data_dir)
    counts = meta.get("counts", {})
    if counts.get("total") != len(records):
        raise ManifestError(
            f"{data_dir}: prepare.json counts {counts.get('total')} utterances but "
            f"manifest.jsonl has {len(records)}; re-run prepare with --force")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise ManifestError(f"{data_dir}: duplicate id {dup!r} in manifest.jsonl")
    _check_no_same_audio(records, f"{data_dir}/{MANIFEST_NAME} (re-run prepare with --force)")
    bad = sorted({r["label"] for r in records} - set(meta.get("labels", [])))
    if bad:
        raise ManifestError(f"{data_dir}: labels {bad} not in prepare.json labels")
    actual = Counter(r["label"] for r in records)
    if any(actual.get(k, 0) != v for k, v in counts.get("labels", {}).items()):
        raise ManifestError(f"{data_dir}: per-label counts differ from prepare.json")
    return meta


def existing_preparation(data_dir: str | Path, corpus: str, options: dict) -> dict | None:
    """The meta of a reusable earlier run with the same options, else None.

    Raises ManifestError when a matching earlier run is internally inconsistent, so a damaged
    DATA_DIR is reported instead of silently reused.
    """
    data_dir = Path(data_dir)
    if not (data_dir / MANIFEST_NAME).is_file() or not (data_dir / PREPARE_META_NAME).is_file():
        return None
    meta = read_prepare_meta(data_dir)
    if meta.get("corpus") != corpus or meta.get("options") != options:
        return None
    return check_consistency(data_dir)


def report_rejections(rejections: list[Rejection]) -> None:
    for rej in rejections:
        log.warning("rejected %s (%s): %s", rej.id, rej.path, rej.reason)


def save_preparation(data_dir: str | Path, corpus: str, classes: str | None, labels: list[str],
                     records: list[dict], rejections: list[Rejection], options: dict) -> dict:
    """Write manifest, rejected list and (last, as the completion marker) prepare.json."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise ManifestError(f"duplicate utterance id {dup!r}")
    _check_no_same_audio(records, str(data_dir))
    meta_path = data_dir / PREPARE_META_NAME
    if meta_path.exists():  # an interrupted rewrite must not look complete
        meta_path.unlink()
    write_manifest(data_dir, records)
    write_rejected(data_dir, rejections)
    meta = build_meta(corpus, classes, labels, records, options, len(rejections))
    write_prepare_meta(data_dir, meta)
    return meta


@dataclass
class Prepared:
    """What a corpus preparer returns: kept records, rejected items and the label order."""

    corpus: str
    classes: str | None
    labels: list[str]
    records: list[dict]
    rejections: list[Rejection]
