"""The original Foal-Net lists: one ``<id> <wav path> <label>`` per line (e.g. session1_test.scp).

IEMOCAP ids give session, speaker, gender, dialog and fold (= session). The lists hold no video
spans, so records are audio-only (``video`` null); use ``prepare iemocap`` for both. Other
ids: fold = 1-based position of the list file on the command line. An id listed twice with the
same wav and label is one item (logged); with another wav or label the later line is rejected;
one wav under two ids is rejected too (no audio twice in a manifest).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from foalnet.data.audio import AudioError, audio_info
from foalnet.data.iemocap import parse_utterance_id
from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import IEMOCAP_LABELS

log = logging.getLogger(__name__)

NAME = "scp"
HELP = "the original's lists (`id path label` per line)"


def read_scp(path: Path) -> tuple[list[tuple[str, str, str]], list[Rejection]]:
    """(id, wav, label) triples, and a rejection (id ``<list>:<line>``) per line without three
    fields: one bad line must not stop the rest of the list (like a bad IEMOCAP summary line)."""
    out, bad = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            bad.append(Rejection(f"{path.name}:{lineno}", str(path),
                                 f"expected `id path label`, got {line!r}"))
            continue
        out.append((fields[0], fields[1], fields[-1]))
    return out, bad


def _record(utt_id: str, wav: Path, label: str, list_index: int) -> dict:
    audio_info(wav)
    try:
        meta = parse_utterance_id(utt_id)
    except ValueError:
        return make_record(id=utt_id, label=label, corpus=NAME, wav=str(wav), fold=list_index)
    return make_record(
        id=utt_id, label=label, corpus=NAME, session=meta["session"], speaker=meta["speaker"],
        gender=meta["gender"], dialog=meta["dialog"], wav=str(wav), fold=meta["session"])


def _repeat_of(seen: dict[str, tuple[Path, str, str]], utt_id: str, wav: Path, label: str
               ) -> tuple[bool, str | None]:
    """(is a repeat, reason to reject it): the same line in two lists (e.g. overlapping training
    lists) is one item; the same id with another wav or label is a conflict, not merged."""
    if utt_id not in seen:
        return False, None
    first_wav, first_label, first_list = seen[utt_id]
    if (first_wav, first_label) == (wav, label):
        return True, None
    return True, (f"id listed again with another wav/label ({wav}, {label!r}; first in "
                  f"{first_list}: {first_wav}, {first_label!r})")


def build_scp(lists: list[str | Path], labels: list[str] | None = None) -> Prepared:
    """Records of the lists; an id listed twice alike is kept once (counted in the log), the
    same wav under another id is rejected by ``run_prepare`` (``manifest.reject_same_audio``)."""
    labels = labels or list(IEMOCAP_LABELS)
    records, rejections, seen, repeats = [], [], {}, 0
    for list_index, list_path in enumerate(map(Path, lists), 1):
        entries, bad_lines = read_scp(list_path)
        rejections.extend(bad_lines)
        for utt_id, wav_text, label in entries:
            wav = (list_path.parent / wav_text).resolve()
            repeat, conflict = _repeat_of(seen, utt_id, wav, label)
            if conflict:
                rejections.append(Rejection(f"{list_path.name}:{utt_id}", str(wav), conflict))
            if repeat:
                repeats += not conflict
                continue
            seen[utt_id] = (wav, label, list_path.name)
            if label not in labels:
                rejections.append(Rejection(utt_id, str(wav),
                                            f"label {label!r} outside the set {labels}"))
                continue
            try:
                records.append(_record(utt_id, wav, label, list_index))
            except AudioError as err:
                rejections.append(Rejection(utt_id, err.path, err.reason))
    if repeats:
        log.info("%d line(s) repeated an earlier list's line exactly: each kept once", repeats)
    return Prepared(NAME, None, labels, records, rejections)


# --- CLI hooks --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lists", type=Path, nargs="+", metavar="LIST.scp",
                        help="the original's list files, one `id path label` per line (IEMOCAP ids give the fold; "
                        "other ids: the fold is the list's position)")
    parser.add_argument("--labels", default=",".join(IEMOCAP_LABELS),
                        help="comma-separated label set and logit order (default neu,hap,sad,ang)")


def _labels(args: argparse.Namespace) -> list[str]:
    return [x.strip() for x in args.labels.split(",") if x.strip()]


def options(args: argparse.Namespace) -> dict:
    return {"lists": [str(p.resolve()) for p in args.lists], "labels": _labels(args)}


def build(args: argparse.Namespace) -> Prepared:
    return build_scp(args.lists, _labels(args))
