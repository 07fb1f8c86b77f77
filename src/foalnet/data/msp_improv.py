"""MSP-IMPROV (Busso et al., IEEE TAC 2017) -> manifest records.

Layout, as the release unpacks (described by public preparation code, e.g. Strong-AI-Lab/emotion
``datasets/MSP-IMPROV/process.py``, which reads ``Evaluation.txt`` and
``session?/*/*/*.wav``; other copies split the media into ``Audio/`` and ``Video/`` with the
same sub-folders, both are read)::

    Evaluation.txt                                    consensus + per-rater labels
    [Audio/|Video/]session{1..6}/S01A/{P,R,S,T}/MSP-IMPROV-S01A-F01-P-FM01.{wav,avi}

Clip name ``MSP-IMPROV-S{sentence}{target}-{gender}{session}-{scenario}-{turn}``: 20 target
sentences, target emotion A/H/S/N of the scenario, speaker F01..M06 (one actress and one actor
per session), scenario letter P/R/S/T (kept as a field: target improvised, read, other
improvised turns, natural interaction; the paper's Table 4 counts 652 + 620 + 4381 + 2785 =
8438 turns). ``Evaluation.txt`` gives each clip a block: a header
``UTD-IMPROV-<name without prefix>.avi; <code>; A:..; V:..; D:.. ; N:..;`` then one line per
rater; the header code is the consensus (perceived) label: A angry, H happy, S sad, N neutral,
O other, X no agreement. Class set: the four emotions (O and X are not emotions and are
dropped, as IEMOCAP's oth/xxx; ``--classes all`` and ``4`` are the same here). Paper counts
of the four: neu 3477, hap 2644, sad 885, ang 792 (7798). Folds: leave-one-session-out
(fold = session 1..6), the corpus's usual protocol.
"""
from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from pathlib import Path

from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import CORPUS_CLASS_SETS, OWN_CLASSES, corpus_labels
from foalnet.data.video import media_problem
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

NAME = "msp-improv"
HELP = "MSP-IMPROV (Evaluation.txt, session1..6/) -> manifest, leave-one-session-out"

CODES = {"A": "ang", "H": "hap", "S": "sad", "N": "neu", "O": None, "X": None}
NAMES = ["ang", "hap", "sad", "neu"]
LABEL_FILE = "Evaluation.txt"
HEADER_RE = re.compile(r"^UTD-IMPROV-(?P<name>[A-Z0-9-]+)\.avi;\s*(?P<code>[A-Z]);\s*A:")
CLIP_RE = re.compile(r"^S(?P<sentence>\d\d)(?P<target>[AHSN])-(?P<gender>[FM])(?P<session>0[1-6])-"
                     r"(?P<scenario>[PRST])-(?P<turn>[A-Z]{1,2}\d+)$")
OFFICIAL = {"clips": 8438, "four": {"neu": 3477, "hap": 2644, "sad": 885, "ang": 792}}


def parse_clip(name: str) -> dict:
    """Fields of a clip name without its prefix (S01A-F01-P-FM01); ValueError if malformed."""
    m = CLIP_RE.match(name)
    if not m:
        raise UsageError(f"not an MSP-IMPROV clip name S..-F01-P-..: {name!r}")
    return m.groupdict()


def parse_evaluation(path: Path) -> tuple[list[tuple[str, str, int]], list[Rejection]]:
    """(clip name, consensus code, line) of every header line; bad headers are rejections."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {LABEL_FILE}; is this the MSP-IMPROV release?")
    out, rejections, seen = [], [], set()
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("UTD-IMPROV-"):
            continue  # rater lines, blank lines
        m = HEADER_RE.match(line)
        where = f"{LABEL_FILE}:{lineno}"
        if not m:
            rejections.append(Rejection(where, str(path), "malformed header line"))
        elif m["code"] not in CODES:
            rejections.append(Rejection(m["name"], str(path),
                                        f"{where}: label {m['code']!r} outside {sorted(CODES)}"))
        elif m["name"] in seen:
            rejections.append(Rejection(m["name"], str(path), f"{where}: repeated clip"))
        else:
            seen.add(m["name"])
            out.append((m["name"], m["code"], lineno))
    return out, rejections


def index_media(root: Path) -> dict[tuple[str, str], list[Path]]:
    """(clip name without prefix, .wav|.avi) -> files under session folders (repeats kept)."""
    found: dict[tuple[str, str], list[Path]] = {}
    for base in (root, root / "Audio", root / "Video"):
        for path in sorted(base.glob("session[1-6]/*/*/*")):
            ext = path.suffix.lower()
            if ext in (".wav", ".avi") and path.name.startswith(("MSP-IMPROV-", "UTD-IMPROV-")):
                found.setdefault((path.stem.split("-", 2)[2], ext), []).append(path)
    return found


def clip_media(name: str, fields: dict, media: dict) -> tuple[Path, Path]:
    """(wav, avi) of one clip; ValueError naming what is missing, repeated or misplaced."""
    out = []
    for ext in (".wav", ".avi"):
        paths = media.get((name, ext), [])
        if len(paths) != 1:
            raise UsageError(f"{len(paths)} {ext} files for {name} (need one)"
                             + (f": {[str(p) for p in paths]}" if paths else ""))
        session = next(p for p in paths[0].parts if p.startswith("session"))
        if int(session[len("session"):]) != int(fields["session"]):
            raise UsageError(f"{paths[0]} lies in {session}/, its name says session "
                             f"{int(fields['session'])}")
        out.append(paths[0])
    return out[0], out[1]


def to_record(name: str, label: str, fields: dict, wav: Path, avi: Path) -> dict:
    session = int(fields["session"])
    return make_record(
        id=f"MSP-IMPROV-{name}", label=label, corpus=NAME, session=session,
        speaker=f"{fields['gender']}{fields['session']}", gender=fields["gender"],
        dialog=f"S{fields['sentence']}{fields['target']}-{session:02d}", wav=str(wav.resolve()),
        video=str(avi.resolve()), side="full", fold=session,
        extra={"scenario": fields["scenario"], "sentence": int(fields["sentence"]),
               "target": CODES[fields["target"]]})


def build_msp_improv(root: str | Path, classes: str = OWN_CLASSES) -> Prepared:
    """Labelled clips -> records, fold = session; every bad clip is a rejection with its reason."""
    root = Path(root)
    clips, rejections = parse_evaluation(root / LABEL_FILE)
    media, wanted = index_media(root), corpus_labels(NAMES, classes)
    records, dropped = [], Counter()
    for name, code, lineno in clips:
        label = CODES[code]
        if label not in wanted:
            dropped[code] += 1
            continue
        try:
            fields = parse_clip(name)
            wav, avi = clip_media(name, fields, media)
        except ValueError as err:
            rejections.append(Rejection(f"MSP-IMPROV-{name}", str(root / LABEL_FILE),
                                        f"{LABEL_FILE}:{lineno}: {err}"))
            continue
        problem = media_problem(wav, avi)
        if problem:
            rejections.append(Rejection(f"MSP-IMPROV-{name}", *problem))
            continue
        records.append(to_record(name, label, fields, wav, avi))
    log.info("MSP-IMPROV %s: %d labelled clips (the paper counts %d), %d kept, dropped codes %s",
             root, len(clips), OFFICIAL["clips"], len(records), dict(dropped))
    return Prepared(NAME, classes, wanted, records, rejections)


# --- CLI hooks (registered by foalnet.data.commands) -----------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the MSP-IMPROV folder (Evaluation.txt, ...)")
    parser.add_argument("--classes", default=OWN_CLASSES, choices=CORPUS_CLASS_SETS,
                        help="all = 4 here: neu/hap/sad/ang (other and no-agreement dropped)")


def options(args: argparse.Namespace) -> dict:
    return {"root": str(args.root.resolve()), "classes": args.classes,
            "protocol": "leave-one-session-out (6 sessions)"}


def build(args: argparse.Namespace) -> Prepared:
    return build_msp_improv(args.root, args.classes)
