"""RAVDESS (Livingstone & Russo, PLoS ONE 2018; zenodo.org/record/1188976) -> manifest records.

The release is a set of zips (Audio_Speech_Actors_01-24, Audio_Song_Actors_01-24,
Video_Speech_Actor_NN, Video_Song_Actor_NN), each holding ``Actor_NN/`` folders; extracted
side by side or into one folder, every ``Actor_NN/`` below ROOT is read. File names are seven
two-digit fields ``MM-VV-EE-II-SS-RR-AA.{wav,mp4}``: modality (01 audio-video mp4, 02 video-only
mp4, 03 audio-only wav), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03
happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal, 02
strong), statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the door"),
repetition (01, 02), actor (01-24; odd male, even female). Speech: 1440 wavs, 2880 mp4s.

One item per recording (all fields but the modality): video = the 01 mp4 (else the 02 one),
audio = the 03 wav (else the 01 mp4's own track); a recording with only a 02 mp4 has no audio
and is rejected, saying so. Speech by default, ``--channel song`` for the songs (files of the
other channel are not items, and are counted in the log). Intensity, statement, repetition and
channel are manifest fields. Folds: blocks of consecutive actors (default 6 folds of 4).
"""
from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from pathlib import Path

from foalnet.data.manifest import Prepared, Rejection, make_record
from foalnet.data.protocol import (CORPUS_CLASS_SETS, OWN_CLASSES, block_speaker_folds,
                                   corpus_labels)
from foalnet.data.video import media_problem
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

NAME = "ravdess"
HELP = "RAVDESS (Actor_NN/ folders of the release zips) -> manifest"

EMOTIONS = {"01": "neu", "02": "cal", "03": "hap", "04": "sad", "05": "ang", "06": "fea",
            "07": "dis", "08": "sur"}
NAMES = list(EMOTIONS.values())
SONG_NAMES = ["neu", "cal", "hap", "sad", "ang", "fea"]  # the songs have no disgust, surprise
CHANNELS = {"01": "speech", "02": "song"}
MODALITY_EXT = {"01": ".mp4", "02": ".mp4", "03": ".wav"}
INTENSITY = {"01": "normal", "02": "strong"}
STATEMENT = {"01": "kids", "02": "dogs"}
NAME_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
# Speech files of the full release (pinned by the corpus test).
OFFICIAL_SPEECH = {"audio": 1440, "video": 2880}


def parse_name(path: Path) -> dict:
    """The seven fields of a file name, checked; ValueError naming the bad field."""
    m = NAME_RE.match(path.stem)
    if not m:
        raise UsageError(f"not a RAVDESS name MM-VV-EE-II-SS-RR-AA: {path.name!r}")
    modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
    checks = (("modality", modality, MODALITY_EXT), ("vocal channel", channel, CHANNELS),
              ("emotion", emotion, EMOTIONS), ("intensity", intensity, INTENSITY),
              ("statement", statement, STATEMENT), ("repetition", repetition, ("01", "02")))
    for what, value, allowed in checks:
        if value not in allowed:
            raise UsageError(f"{what} {value!r} of {path.name!r} outside {sorted(allowed)}")
    if path.suffix.lower() != MODALITY_EXT[modality]:
        raise UsageError(f"modality {modality} of {path.name!r} needs a "
                         f"{MODALITY_EXT[modality]} file")
    if not 1 <= int(actor) <= 24:
        raise UsageError(f"actor {actor!r} of {path.name!r} outside 01-24")
    if path.parent.name != f"Actor_{actor}":
        raise UsageError(f"{path.name!r} is in {path.parent.name}/, not Actor_{actor}/")
    return {"modality": modality, "channel": channel, "emotion": emotion,
            "intensity": intensity, "statement": statement, "repetition": repetition,
            "actor": actor, "key": "-".join(m.groups()[1:])}


def find_files(root: Path) -> list[Path]:
    """Every file of every Actor_NN/ folder below ROOT (dot-files ignored)."""
    folders = sorted(p for p in root.rglob("Actor_*") if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root}: no Actor_NN folders; is this the RAVDESS release?")
    return [p for d in folders for p in sorted(d.iterdir())
            if p.is_file() and not p.name.startswith(".")]


def group_recordings(files: list[Path], channel: str
                     ) -> tuple[dict[str, dict[str, Path]], list[Rejection], Counter]:
    """key -> {modality: file} of one vocal channel; bad names and repeats are rejections."""
    recordings: dict[str, dict[str, Path]] = {}
    rejections, other = [], Counter()
    for path in files:
        try:
            f = parse_name(path)
        except ValueError as err:
            rejections.append(Rejection(path.stem, str(path), str(err)))
            continue
        if CHANNELS[f["channel"]] != channel:
            other[CHANNELS[f["channel"]]] += 1
            continue
        held = recordings.setdefault(f["key"], {})
        if f["modality"] in held:
            rejections.append(Rejection(path.stem, str(path),
                                        f"same file name as {held[f['modality']]}"))
            continue
        held[f["modality"]] = path
    return recordings, rejections, other


def recording_media(files: dict[str, Path]) -> tuple[Path | None, Path | None]:
    """(audio, video) of a recording: 03 wav or the 01 track; 01 mp4 or 02 mp4."""
    video = files.get("01") or files.get("02")
    audio = files.get("03") or files.get("01")
    return audio, video


def to_record(key: str, label: str, audio: Path, video: Path | None) -> dict:
    _, emotion, intensity, statement, repetition, actor = key.split("-")
    return make_record(
        id=f"ravdess-{key}", label=label, corpus=NAME, session=None, speaker=f"Actor_{actor}",
        gender="M" if int(actor) % 2 else "F", dialog=None, wav=str(audio.resolve()),
        video=str(video.resolve()) if video else None, side="full" if video else None, fold=0,
        extra={"vocal_channel": CHANNELS[key[:2]], "intensity": INTENSITY[intensity],
               "statement": STATEMENT[statement], "repetition": int(repetition)})


def build_ravdess(root: str | Path, classes: str = OWN_CLASSES, channel: str = "speech",
                  folds: int = 6) -> Prepared:
    """Recordings -> records; every file is an item's part, a rejection, or counted as the
    other channel."""
    root = Path(root)
    recordings, rejections, other = group_recordings(find_files(root), channel)
    names = NAMES if channel == "speech" else SONG_NAMES
    wanted = corpus_labels(names, classes)
    records, dropped = [], Counter()
    for key in sorted(recordings):
        label = EMOTIONS[key.split("-")[1]]
        if label not in names:
            rejections.append(Rejection(f"ravdess-{key}", str(next(iter(recordings[key].values()))),
                                        f"label {label!r} outside the {channel} set {names}"))
            continue
        if label not in wanted:
            dropped[label] += 1
            continue
        audio, video = recording_media(recordings[key])
        if audio is None:
            rejections.append(Rejection(f"ravdess-{key}", str(video), "only the video-only (02) "
                                        "mp4: no 03 wav or 01 mp4 gives the item audio"))
            continue
        problem = media_problem(audio, video)
        if problem:
            rejections.append(Rejection(f"ravdess-{key}", *problem))
            continue
        records.append(to_record(key, label, audio, video))
    if records:
        mapping = block_speaker_folds([r["speaker"] for r in records], folds)
        for r in records:
            r["fold"] = mapping[r["speaker"]]
    log.info("RAVDESS %s: %d %s recordings, %d kept for classes %r, dropped by the class set "
             "%s; %s files of the other channel not read", root, len(recordings), channel,
             len(records), classes, dict(dropped), dict(other) or 0)
    return Prepared(NAME, classes, wanted, records, rejections)


# --- CLI hooks (registered by foalnet.data.commands) -----------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="folder holding the Actor_NN/ folders")
    parser.add_argument("--classes", default=OWN_CLASSES, choices=CORPUS_CLASS_SETS,
                        help="all: its 8 emotions (song: 6 occur; default); 4: neu/hap/sad/ang "
                             "only (calm is dropped, not merged)")
    parser.add_argument("--channel", default="speech", choices=("speech", "song"),
                        help="vocal channel (default speech)")
    parser.add_argument("--num-folds", dest="folds", metavar="K", type=int, default=6,
                        help="speaker-disjoint folds of consecutive actors (default 6: 4 each)")


def options(args: argparse.Namespace) -> dict:
    return {"root": str(args.root.resolve()), "classes": args.classes, "channel": args.channel,
            "folds": args.folds,
            "protocol": f"{args.folds} folds of consecutive actors (speaker-disjoint)"}


def build(args: argparse.Namespace) -> Prepared:
    return build_ravdess(args.root, args.classes, args.channel, args.folds)
