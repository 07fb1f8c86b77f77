"""CREMA-D (Cao et al., IEEE TAC 2014) -> manifest records.

Layout of the release (github.com/CheyneyComputerScience/CREMA-D, its README)::

    VideoFlash/<clip>.flv               audio-visual clips (a data stream first, then video, audio)
    AudioWAV/<clip>.wav                 16 kHz audio for computation (preferred)
    AudioMP3/<clip>.mp3                 the audio played to raters (second choice)
    processedResults/tabulatedVotes.csv crowd votes per clip and query type (optional)
    VideoDemographics.csv               ActorID -> Sex (optional: gender)

``<clip>`` = ``{actor}_{sentence}_{emotion}_{level}``, e.g. ``1001_DFA_ANG_XX``: 91 actors
(1001-1091), 12 sentences, emotions ANG DIS FEA HAP NEU SAD, level LO MD HI or XX
(unspecified); 7442 clips. Audio: AudioWAV, else AudioMP3, else the FLV's own audio track
(streams are chosen by type, so the FLVs' leading data stream is never read as media); a clip
with audio but no FLV is kept as audio-only. Labels: the intended emotion of the file name
(default) or, with ``--labels perceived``, the crowd's majority vote (``emoVote``) of the
tabulated votes: the release numbers its rows by query type, 1xxxxx voice only, 2xxxxx face
only, 3xxxxx audio-visual; ``--votes`` picks one (default av, what the model sees). A tied vote
("A:D") is rejected, never broken. Folds: K speaker-disjoint folds (default 5).
"""
from __future__ import annotations

import argparse
import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import (CORPUS_CLASS_SETS, OWN_CLASSES, corpus_labels,
                                   speaker_folds)
from foalnet.data.video import media_problem
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

NAME = "cremad"
HELP = "CREMA-D (VideoFlash/, AudioWAV/ or AudioMP3/) -> manifest"

EMOTIONS = {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
VOTE_LETTERS = {"A": "ang", "D": "dis", "F": "fea", "H": "hap", "N": "neu", "S": "sad"}
NAMES = ["ang", "dis", "fea", "hap", "neu", "sad"]
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
CLIP_RE = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_"
                     r"(?P<level>[A-Z]{2})$")
VOTES_FILE = Path("processedResults") / "tabulatedVotes.csv"
VOTE_QUERY = {"voice": "1", "face": "2", "av": "3"}  # first digit of the row number
OFFICIAL_CLIPS = 7442
MEDIA_DIRS = (("VideoFlash", ".flv"), ("AudioWAV", ".wav"), ("AudioMP3", ".mp3"))


@dataclass(frozen=True)
class Clip:
    """One clip name and the files the release holds for it."""

    name: str
    actor: str
    sentence: str
    emotion: str
    level: str
    files: dict[str, Path]  # media folder -> file


def parse_clip_name(name: str) -> dict:
    """Actor, sentence, emotion and level of a clip name; ValueError naming what is wrong."""
    m = CLIP_RE.match(name)
    if not m:
        raise UsageError(f"not a CREMA-D clip name {{actor}}_{{sentence}}_{{emotion}}_{{level}}: "
                         f"{name!r}")
    if m["sentence"] not in SENTENCES:
        raise UsageError(f"unknown sentence code {m['sentence']!r} in {name!r}")
    if m["emotion"] not in EMOTIONS:
        raise UsageError(f"label {m['emotion']!r} of {name!r} outside {sorted(EMOTIONS)}")
    if m["level"] not in LEVELS:
        raise UsageError(f"unknown level {m['level']!r} in {name!r}")
    return m.groupdict()


def find_clips(root: Path) -> tuple[list[Clip], list[Rejection]]:
    """Every clip name of the media folders, with its files; bad names are rejections."""
    if not any((root / d).is_dir() for d, _ in MEDIA_DIRS):
        raise FileNotFoundError(f"{root}: none of VideoFlash/, AudioWAV/, AudioMP3/; is this "
                                "the CREMA-D release?")
    files: dict[str, dict[str, Path]] = {}
    rejections = []
    for folder, ext in MEDIA_DIRS:
        for path in sorted((root / folder).glob("*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() != ext:
                rejections.append(Rejection(path.name, str(path), f"not a {ext} file in {folder}/"))
                continue
            files.setdefault(path.stem, {})[folder] = path
    clips = []
    for name in sorted(files):
        try:
            meta = parse_clip_name(name)
        except ValueError as err:
            for path in files[name].values():
                rejections.append(Rejection(name, str(path), str(err)))
            continue
        clips.append(Clip(name=name, files=files[name], **meta))
    return clips, rejections


def read_votes(path: Path, query: str) -> dict[str, str]:
    """clip name -> the crowd's emoVote for one query type (voice, face or av)."""
    digit = VOTE_QUERY[query]
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if str(row.get("", "")).startswith(digit):
                out[row["fileName"].strip()] = row["emoVote"].strip()
    if not out:
        raise UsageError(f"{path}: no rows of query type {query} (row numbers {digit}xxxxx)")
    return out


def read_genders(root: Path) -> dict[str, str]:
    """ActorID -> F/M from VideoDemographics.csv ({} when the file is absent)."""
    path = root / "VideoDemographics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["ActorID"].strip(): row["Sex"].strip()[:1].upper()
                for row in csv.DictReader(fh)}


def clip_label(clip: Clip, votes: dict[str, str] | None) -> str:
    """The intended label, or the perceived one when votes are given; ValueError if unusable."""
    if votes is None:
        return EMOTIONS[clip.emotion]
    vote = votes.get(clip.name)
    if vote is None:
        raise UsageError("no row in the tabulated votes")
    if vote not in VOTE_LETTERS:
        raise UsageError(f"crowd vote {vote!r} is a tie or unknown: not one label")
    return VOTE_LETTERS[vote]


def clip_media(clip: Clip) -> tuple[Path, Path | None]:
    """(audio, video): AudioWAV, else AudioMP3, else the FLV's own audio track."""
    video = clip.files.get("VideoFlash")
    audio = clip.files.get("AudioWAV") or clip.files.get("AudioMP3") or video
    return audio, video


def to_record(clip: Clip, label: str, genders: dict[str, str]) -> dict:
    audio, video = clip_media(clip)
    return make_record(
        id=clip.name, label=label, corpus=NAME, session=None, speaker=clip.actor,
        gender=genders.get(clip.actor), dialog=None, wav=str(audio.resolve()),
        video=str(video.resolve()) if video else None, side="full" if video else None, fold=0,
        extra={"sentence": clip.sentence, "level": clip.level,
               "intended": EMOTIONS[clip.emotion]})


def build_cremad(root: str | Path, classes: str = OWN_CLASSES, labels: str = "intended",
                 votes: str = "av", folds: int = 5) -> Prepared:
    """Clips -> records; bad names, labels and media are rejected per clip, with the reason."""
    root = Path(root)
    clips, rejections = find_clips(root)
    vote_table = None
    if labels == "perceived":
        if not (root / VOTES_FILE).is_file():
            raise FileNotFoundError(f"{root / VOTES_FILE}: --labels perceived needs the "
                                    "release's tabulated votes")
        vote_table = read_votes(root / VOTES_FILE, votes)
    wanted, genders = corpus_labels(NAMES, classes), read_genders(root)
    records, dropped = [], Counter()
    for clip in clips:
        try:
            label = clip_label(clip, vote_table)
        except ValueError as err:
            rejections.append(Rejection(clip.name, str(root / VOTES_FILE), str(err)))
            continue
        if label not in wanted:
            dropped[label] += 1
            continue
        problem = media_problem(*clip_media(clip))
        if problem:
            rejections.append(Rejection(clip.name, *problem))
            continue
        records.append(to_record(clip, label, genders))
    if records:
        mapping = speaker_folds(dict(Counter(r["speaker"] for r in records)), folds)
        for r in records:
            r["fold"] = mapping[r["speaker"]]
    log.info("CREMA-D %s: %d clips (the release has %d), %d kept for classes %r, dropped by "
             "the class set %s, %d audio-only", root, len(clips), OFFICIAL_CLIPS, len(records),
             classes, dict(dropped), sum(r["video"] is None for r in records))
    return Prepared(NAME, classes, wanted, records, rejections)


# --- CLI hooks (registered by foalnet.data.commands) -----------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the CREMA-D folder (VideoFlash/, AudioWAV/ ...)")
    parser.add_argument("--classes", default=OWN_CLASSES, choices=CORPUS_CLASS_SETS,
                        help="all: its 6 emotions (default); 4: neu/hap/sad/ang only")
    parser.add_argument("--labels", default="intended", choices=("intended", "perceived"),
                        help="intended: the acted emotion of the name (default); perceived: the "
                             "crowd's majority vote of processedResults/tabulatedVotes.csv")
    parser.add_argument("--votes", default="av", choices=sorted(VOTE_QUERY),
                        help="which raters' votes --labels perceived uses (default av)")
    parser.add_argument("--num-folds", dest="folds", metavar="K", type=int, default=5, help="speaker-disjoint folds (default 5)")


def options(args: argparse.Namespace) -> dict:
    return {"root": str(args.root.resolve()), "classes": args.classes, "labels": args.labels,
            "votes": args.votes if args.labels == "perceived" else None, "folds": args.folds,
            "protocol": f"{args.folds} speaker-disjoint folds (actors)"}


def build(args: argparse.Namespace) -> Prepared:
    return build_cremad(args.root, args.classes, args.labels, args.votes, args.folds)
