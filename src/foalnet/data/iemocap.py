"""IEMOCAP_full_release -> plain utterance records (spec §4).

Parsing only: the class set, exc->hap merge and folds are applied by ``build`` through
``foalnet.data.protocol``. Layout read here::

    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt     labels (sub-folders ignored)
    Session{1..5}/sentences/wav/<dialog>/<utt>.wav      utterance audio
    Session{1..5}/dialog/avi/DivX/<dialog>.avi          dialog video, both actors side by side
"""
from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from foalnet.data.audio import AudioError, audio_info
from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import DEFAULT_CLASSES, CLASS_SETS, labels_of, map_label
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

NAME = "iemocap"
HELP = "IEMOCAP_full_release (real or `foalnet synth`) -> manifest"

IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "fea", "sur", "dis", "oth", "xxx")
# `[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]`
SUMMARY_RE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\t(?P<id>\S+)\t"
    r"(?P<code>\S+)\t\[(?P<vad>[^\]]*)\]")
UTT_ID_RE = re.compile(r"^Ses0(?P<session>[1-5])(?P<marker>[FM])_(?P<rest>.+)_(?P<gender>[FM])\d+$")

# Number of labelled utterances in the full release: when a root has exactly this many, it is
# the real corpus and the 4-class counts below must be reproduced exactly (spec §4).
FULL_RELEASE_UTTERANCES = 10039
EXPECTED_COUNTS = {
    "4": {"labels": {"neu": 1708, "hap": 1636, "sad": 1084, "ang": 1103},
          "sessions": {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}},
    "4-no-exc": {"labels": {"neu": 1708, "hap": 595, "sad": 1084, "ang": 1103},
                 "sessions": {1: 942, 2: 813, 3: 1000, 4: 793, 5: 942}},
}


@dataclass(frozen=True)
class Utterance:
    """One summary line of an EmoEvaluation file, with what its id implies."""

    id: str
    code: str
    start: float
    end: float
    vad: tuple[float, ...]
    session: int
    dialog: str
    gender: str
    speaker: str
    side: str
    label_file: str


def parse_utterance_id(utt_id: str) -> dict:
    """Session, dialog, speaker, gender and side from an id such as Ses01F_script01_1_M003.

    Side rule (spec §4): the marker wearer (id[5]) sits on the left, so the speaker is on the
    left iff the speaker's gender (first letter of the last field) equals id[5].
    """
    m = UTT_ID_RE.match(utt_id)
    if not m:
        raise UsageError(f"not an IEMOCAP utterance id: {utt_id!r}")
    session, gender = int(m["session"]), m["gender"]
    return {
        "session": session,
        "dialog": utt_id.rsplit("_", 1)[0],
        "gender": gender,
        "speaker": f"Ses0{session}{gender}",
        "side": "left" if gender == m["marker"] else "right",
    }


def parse_label_file(path: Path) -> tuple[list[Utterance], list[Rejection]]:
    """Summary lines of one EmoEvaluation file; malformed summary lines become rejections."""
    utts: list[Utterance] = []
    rejections: list[Rejection] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.startswith("["):  # '%' headers, annotator lines, blank lines
            continue
        m = SUMMARY_RE.match(line)
        if not m:
            rejections.append(Rejection(f"{path.name}:{lineno}", str(path),
                                        "malformed summary line"))
            continue
        try:
            meta = parse_utterance_id(m["id"])
            vad = tuple(float(x) for x in m["vad"].split(",") if x.strip())
        except ValueError as err:
            rejections.append(Rejection(m["id"], str(path), str(err)))
            continue
        utts.append(Utterance(id=m["id"], code=m["code"], start=float(m["start"]),
                              end=float(m["end"]), vad=vad, label_file=str(path), **meta))
    return utts, rejections


def label_files(root: Path) -> list[Path]:
    """EmoEvaluation/<dialog>.txt of every session, sorted; sub-folders and dot-files ignored."""
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise FileNotFoundError(f"{root}: no Session1..Session5 folders; is this "
                                "IEMOCAP_full_release?")
    files = []
    for session in sessions:
        folder = session / "dialog" / "EmoEvaluation"
        files += sorted(p for p in folder.glob("*.txt") if p.is_file() and not p.name.startswith("."))
    return files


def parse_release(root: str | Path) -> tuple[list[Utterance], list[Rejection]]:
    """Every labelled utterance of the release, in session / dialog / time order."""
    utts: list[Utterance] = []
    rejections: list[Rejection] = []
    for path in label_files(Path(root)):
        file_utts, file_rej = parse_label_file(path)
        for u in file_utts:
            if u.dialog != path.stem:
                file_rej.append(Rejection(u.id, str(path), f"id does not belong to {path.stem}"))
        utts += [u for u in file_utts if u.dialog == path.stem]
        rejections += file_rej
    seen: set[str] = set()
    unique = []
    for u in utts:
        if u.id in seen:
            rejections.append(Rejection(u.id, u.label_file, "duplicate utterance id"))
            continue
        seen.add(u.id)
        unique.append(u)
    return unique, rejections


def check_expected_counts(labelled: list[tuple[Utterance, str]], classes: str,
                          n_parsed: int) -> None:
    """On the real corpus (10039 labelled utterances) the 4-class counts must match spec §4."""
    if n_parsed != FULL_RELEASE_UTTERANCES:
        return
    want = EXPECTED_COUNTS[classes]
    got_labels = dict(Counter(lab for _, lab in labelled))
    got_sessions = dict(Counter(u.session for u, _ in labelled))
    if got_labels != want["labels"] or got_sessions != want["sessions"]:
        raise UsageError(f"IEMOCAP counts for classes {classes!r} are off: labels {got_labels} "
                         f"(expected {want['labels']}), sessions {got_sessions} "
                         f"(expected {want['sessions']})")


def _wav_path(root: Path, u: Utterance) -> Path:
    return root / f"Session{u.session}" / "sentences" / "wav" / u.dialog / f"{u.id}.wav"


def _video_path(root: Path, u: Utterance) -> Path:
    return root / f"Session{u.session}" / "dialog" / "avi" / "DivX" / f"{u.dialog}.avi"


def _video_problem(path: Path) -> str | None:
    """Why a dialog video is unusable (header check only), or None."""
    import av

    if not path.is_file():
        return "missing video"
    if path.stat().st_size == 0:
        return "empty video file (0 bytes)"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
    except Exception as err:  # PyAV's error classes vary by version
        return f"unreadable video: {err}"
    return None


def to_records(root: Path, labelled: list[tuple[Utterance, str]]) -> tuple[list[dict], list[Rejection]]:
    """Manifest records for labelled utterances whose wav and dialog video open (headers only)."""
    records, rejections = [], []
    video_problems: dict[Path, str | None] = {}
    for u, label in labelled:
        wav, video = _wav_path(root, u), _video_path(root, u)
        try:
            audio_info(wav)
        except AudioError as err:
            rejections.append(Rejection(u.id, str(wav), err.reason))
            continue
        if video not in video_problems:
            video_problems[video] = _video_problem(video)
        if video_problems[video]:
            rejections.append(Rejection(u.id, str(video), video_problems[video]))
            continue
        records.append(make_record(
            id=u.id, label=label, corpus=NAME, session=u.session, speaker=u.speaker,
            gender=u.gender, dialog=u.dialog, wav=str(wav.resolve()), audio_start=None,
            audio_end=None, video=str(video.resolve()), start=u.start, end=u.end, side=u.side,
            fold=u.session))
    return records, rejections


def build_iemocap(root: str | Path, classes: str = DEFAULT_CLASSES) -> Prepared:
    """Parse, apply the class set, check counts and files; never raises for a single bad item."""
    root = Path(root)
    utts, rejections = parse_release(root)
    labelled = []
    for u in utts:
        if u.code not in IEMOCAP_CODES:
            rejections.append(Rejection(u.id, u.label_file, f"label {u.code!r} outside the "
                                        f"IEMOCAP codes {list(IEMOCAP_CODES)}"))
            continue
        label = map_label(u.code, classes)
        if label is not None:
            labelled.append((u, label))
    check_expected_counts(labelled, classes, len(utts))
    records, file_rej = to_records(root, labelled)
    log.info("IEMOCAP %s: %d labelled utterances, %d kept for classes %r",
             root, len(utts), len(records), classes)
    return Prepared(NAME, classes, labels_of(classes), records, rejections + file_rej)


# --- CLI hooks (registered by foalnet.data.commands) -----------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the IEMOCAP_full_release folder")
    parser.add_argument("--classes", default=DEFAULT_CLASSES, choices=sorted(CLASS_SETS),
                        help="4: neu/hap+exc/sad/ang (default); 4-no-exc: exc dropped")


def options(args: argparse.Namespace) -> dict:
    return {"root": str(args.root.resolve()), "classes": args.classes}


def build(args: argparse.Namespace) -> Prepared:
    return build_iemocap(args.root, args.classes)
