"""CREMA-D, RAVDESS, MSP-IMPROV and MELD parsers on small trees in each release's layout, with
real (tiny) media files; official counts on the real corpora behind the ``corpus`` marker."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from foalnet.cli import main
from foalnet.data import cremad, meld, msp_improv, ravdess
from foalnet.data.manifest import read_manifest, read_prepare_meta, read_rejected
from foalnet.data.protocol import folds_of, split_fold

SR = 16000


# ----------------------------------------------------------------------------- tiny media
def write_wav(path: Path, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR, subtype="PCM_16")
    return path


def write_video(path: Path, seconds: float = 1.0, audio: bool = True, fmt: str | None = None,
                vcodec: str = "mpeg4", acodec: str = "aac", fps: int = 10) -> Path:
    """A small grey-ramp clip; ``audio``: a mono tone track of the same length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream(acodec, rate=22050, layout="mono") if audio else None
        for i in range(int(seconds * fps)):
            img = np.full((48, 64, 3), (i * 20) % 255, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            n = int(seconds * 22050)
            samples = (3000 * np.sin(np.arange(n) / 8)).astype(np.int16)
            for start in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="s16",
                                                   layout="mono")
                frame.sample_rate, frame.pts = 22050, start
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def write_flv(path: Path, seconds: float = 1.0, audio: bool = True) -> Path:
    return write_video(path, seconds, audio, fmt="flv", vcodec="flv", acodec="mp3")


def write_broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"FLV\x01\x05" + bytes(200))
    return path


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def reasons(rejections) -> dict[str, str]:
    return {r.id: r.reason for r in rejections}


# ----------------------------------------------------------------------------- CREMA-D
@pytest.fixture(scope="module")
def crema_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crema") / "CREMA-D"
    write_flv(root / "VideoFlash/1001_DFA_ANG_XX.flv")
    write_wav(root / "AudioWAV/1001_DFA_ANG_XX.wav")
    write_flv(root / "VideoFlash/1002_IEO_HAP_HI.flv")
    write_mp3(root / "AudioMP3/1002_IEO_HAP_HI.mp3")
    write_flv(root / "VideoFlash/1003_TIE_NEU_XX.flv")  # audio from the flv itself
    write_wav(root / "AudioWAV/1004_ITS_SAD_LO.wav")  # audio only
    write_flv(root / "VideoFlash/1004_XYZ_SAD_LO.flv")  # unknown sentence
    write_wav(root / "AudioWAV/1005_DFA_CAL_XX.wav")  # label outside the set
    write_flv(root / "VideoFlash/1003_DFA_FEA_XX.flv", seconds=3.0)
    write_wav(root / "AudioWAV/1003_DFA_FEA_XX.wav", seconds=1.0)  # lengths 3 s vs 1 s
    write_broken(root / "VideoFlash/1002_DFA_DIS_XX.flv")
    write_wav(root / "AudioWAV/1002_DFA_DIS_XX.wav")
    write_wav(root / "AudioWAV/1001_IEO_DIS_MD.wav")
    write_wav(root / "AudioWAV/1004_IEO_FEA_HI.wav")
    (root / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n")
    votes = root / cremad.VOTES_FILE
    votes.parent.mkdir(parents=True)
    votes.write_text(
        '"","A","D","F","H","N","S","fileName","numResponses","agreement","emoVote"\n'
        '"100001",0,0,0,0,9,1,"1001_DFA_ANG_XX",10,0.9,"N"\n'
        '"100002",0,0,0,9,1,0,"1002_IEO_HAP_HI",10,0.9,"H"\n'
        '"300001",8,1,0,0,1,0,"1001_DFA_ANG_XX",10,0.8,"A"\n'
        '"300002",0,0,0,5,5,0,"1002_IEO_HAP_HI",10,0.5,"H:N"\n'
        '"300003",0,0,0,9,1,0,"1003_TIE_NEU_XX",10,0.9,"H"\n'
        '"300004",0,0,0,0,1,9,"1004_ITS_SAD_LO",10,0.9,"S"\n'
        '"300005",0,9,0,0,1,0,"1001_IEO_DIS_MD",10,0.9,"D"\n')
    return root


def write_mp3(path: Path, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp3") as c:
        a = c.add_stream("mp3", rate=22050, layout="mono")
        n = int(seconds * 22050)
        frame = av.AudioFrame.from_ndarray((3000 * np.sin(np.arange(n) / 8)).astype(np.int16)[None],
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts = 22050, 0
        for p in list(a.encode(frame)) + list(a.encode()):
            c.mux(p)
    return path


def test_cremad_parses_names_and_rejects_bad_ones():
    assert cremad.parse_clip_name("1001_DFA_ANG_XX") == {
        "actor": "1001", "sentence": "DFA", "emotion": "ANG", "level": "XX"}
    for bad, says in (("1001_DFA_ANG", "not a CREMA-D clip name"),
                      ("1001_XYZ_ANG_XX", "unknown sentence"),
                      ("1001_DFA_CAL_XX", "label 'CAL'"), ("1001_DFA_ANG_ZZ", "unknown level")):
        with pytest.raises(ValueError, match=says):
            cremad.parse_clip_name(bad)


def test_cremad_audio_choice_video_and_rejections(crema_root: Path):
    prepared = cremad.build_cremad(crema_root, folds=2)
    recs = by_id(prepared.records)
    assert prepared.labels == ["neu", "hap", "sad", "ang", "dis", "fea"]
    assert sorted(recs) == ["1001_DFA_ANG_XX", "1001_IEO_DIS_MD", "1002_IEO_HAP_HI",
                            "1003_TIE_NEU_XX", "1004_IEO_FEA_HI", "1004_ITS_SAD_LO"]
    ang = recs["1001_DFA_ANG_XX"]
    assert ang["wav"].endswith("AudioWAV/1001_DFA_ANG_XX.wav")
    assert ang["video"].endswith("VideoFlash/1001_DFA_ANG_XX.flv") and ang["side"] == "full"
    assert (ang["label"], ang["speaker"], ang["gender"], ang["level"]) == ("ang", "1001", "M", "XX")
    assert recs["1002_IEO_HAP_HI"]["wav"].endswith("AudioMP3/1002_IEO_HAP_HI.mp3")
    assert recs["1003_TIE_NEU_XX"]["wav"] == recs["1003_TIE_NEU_XX"]["video"]  # flv's own track
    assert recs["1004_ITS_SAD_LO"]["video"] is None  # audio only, kept
    why = reasons(prepared.rejections)
    assert set(why) == {"1004_XYZ_SAD_LO", "1005_DFA_CAL_XX", "1003_DFA_FEA_XX",
                        "1002_DFA_DIS_XX"}
    assert "unknown sentence code 'XYZ'" in why["1004_XYZ_SAD_LO"]
    assert "label 'CAL'" in why["1005_DFA_CAL_XX"]
    assert "lengths differ by more than 1 s" in why["1003_DFA_FEA_XX"]
    assert why["1002_DFA_DIS_XX"].startswith(("cannot open", "no decodable frames"))
    folds = {r["speaker"]: r["fold"] for r in prepared.records}
    assert sorted(folds.values()) == [1, 1, 2, 2]  # whole actors per fold


def test_cremad_four_classes_and_perceived_votes(crema_root: Path):
    four = cremad.build_cremad(crema_root, classes="4", folds=2)
    assert four.labels == ["neu", "hap", "sad", "ang"]
    assert sorted(r["label"] for r in four.records) == ["ang", "hap", "neu", "sad"]
    seen = cremad.build_cremad(crema_root, labels="perceived", folds=2)
    recs, why = by_id(seen.records), reasons(seen.rejections)
    assert recs["1001_DFA_ANG_XX"]["label"] == "ang"  # the av row (3xxxxx), not the voice row
    assert recs["1003_TIE_NEU_XX"]["label"] == "hap"  # perceived, intended kept as a field
    assert recs["1003_TIE_NEU_XX"]["intended"] == "neu"
    assert "tie" in why["1002_IEO_HAP_HI"] and "'H:N'" in why["1002_IEO_HAP_HI"]
    assert why["1004_IEO_FEA_HI"] == "no row in the tabulated votes"
    voice = by_id(cremad.build_cremad(crema_root, labels="perceived", votes="voice",
                                      folds=2).records)
    assert {k: r["label"] for k, r in voice.items()} == {"1001_DFA_ANG_XX": "neu",
                                                        "1002_IEO_HAP_HI": "hap"}


def test_cremad_cli_writes_manifest_and_refuses_missing_votes(crema_root: Path, tmp_path: Path):
    out = tmp_path / "data"
    assert main(["prepare", "cremad", str(crema_root), "--out", str(out), "--num-folds", "2"]) == 1
    meta = read_prepare_meta(out)
    assert meta["counts"]["total"] == 6 and meta["rejected"] == 4
    assert meta["options"]["protocol"] == "2 speaker-disjoint folds (actors)"
    assert {r["id"] for r in read_rejected(out)} == {"1004_XYZ_SAD_LO", "1005_DFA_CAL_XX",
                                                    "1003_DFA_FEA_XX", "1002_DFA_DIS_XX"}
    bare = tmp_path / "bare"
    write_wav(bare / "AudioWAV/1001_DFA_ANG_XX.wav")
    assert main(["prepare", "cremad", str(bare), "--out", str(tmp_path / "d2"),
                 "--labels", "perceived"]) == 2


# ----------------------------------------------------------------------------- RAVDESS
@pytest.fixture(scope="module")
def ravdess_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ravdess")
    speech_a, video = root / "Audio_Speech_Actors_01-24", root / "Video_Speech_Actor_01"
    write_video(video / "Actor_01/01-01-03-01-01-01-01.mp4")
    write_video(video / "Actor_01/02-01-03-01-01-01-01.mp4", audio=False)
    write_wav(speech_a / "Actor_01/03-01-03-01-01-01-01.wav")
    write_video(root / "Video_Speech_Actor_02/Actor_02/02-01-05-02-02-01-02.mp4", audio=False)
    write_video(root / "Video_Speech_Actor_02/Actor_02/01-01-04-02-02-02-02.mp4")
    write_wav(speech_a / "Actor_02/03-01-02-01-01-01-02.wav")  # calm
    write_wav(speech_a / "Actor_01/03-01-09-01-01-01-01.wav")  # emotion 09
    write_wav(speech_a / "Actor_01/03-01-01-01-01-01-02.wav")  # actor 02 in Actor_01/
    write_wav(root / "Audio_Song_Actors_01-24/Actor_01/03-02-03-02-01-01-01.wav")
    write_wav(root / "Audio_Song_Actors_01-24/Actor_02/03-02-05-01-02-01-02.wav")
    return root


def test_ravdess_pairs_recordings_and_keeps_fields(ravdess_root: Path):
    prepared = ravdess.build_ravdess(ravdess_root, folds=2)
    recs = by_id(prepared.records)
    assert prepared.labels == ["neu", "hap", "sad", "ang", "cal", "fea", "dis", "sur"]
    assert sorted(recs) == ["ravdess-01-02-01-01-01-02", "ravdess-01-03-01-01-01-01",
                            "ravdess-01-04-02-02-02-02"]
    hap = recs["ravdess-01-03-01-01-01-01"]
    assert hap["video"].endswith("Actor_01/01-01-03-01-01-01-01.mp4")  # the 01 mp4, not 02
    assert hap["wav"].endswith("Actor_01/03-01-03-01-01-01-01.wav")
    assert (hap["speaker"], hap["gender"], hap["label"]) == ("Actor_01", "M", "hap")
    assert (hap["intensity"], hap["statement"], hap["repetition"], hap["vocal_channel"]) == (
        "normal", "kids", 1, "speech")
    sad = recs["ravdess-01-04-02-02-02-02"]
    assert sad["wav"] == sad["video"] and sad["intensity"] == "strong"  # 01 mp4's own track
    assert recs["ravdess-01-02-01-01-01-02"]["video"] is None  # calm, audio only
    why = reasons(prepared.rejections)
    assert set(why) == {"ravdess-01-05-02-02-01-02", "03-01-09-01-01-01-01",
                        "03-01-01-01-01-01-02"}
    assert "no 03 wav or 01 mp4" in why["ravdess-01-05-02-02-01-02"]
    assert "emotion '09'" in why["03-01-09-01-01-01-01"]
    assert "not Actor_02/" in why["03-01-01-01-01-01-02"]
    assert {r["speaker"]: r["fold"] for r in prepared.records} == {"Actor_01": 1, "Actor_02": 2}


def test_ravdess_four_classes_and_song(ravdess_root: Path):
    four = ravdess.build_ravdess(ravdess_root, classes="4", folds=2)
    assert sorted(r["label"] for r in four.records) == ["hap", "sad"]  # calm dropped, not merged
    song = ravdess.build_ravdess(ravdess_root, channel="song", folds=2)
    assert song.labels == ["neu", "hap", "sad", "ang", "cal", "fea"]
    assert {r["id"]: (r["label"], r["vocal_channel"], r["intensity"]) for r in song.records} == {
        "ravdess-02-03-02-01-01-01": ("hap", "song", "strong"),
        "ravdess-02-05-01-02-01-02": ("ang", "song", "normal")}


def test_ravdess_block_folds():
    from foalnet.data.protocol import block_speaker_folds

    actors = [f"Actor_{i:02d}" for i in range(1, 25)]
    folds = block_speaker_folds(actors, 6)
    assert [folds[a] for a in actors[:8]] == [1, 1, 1, 1, 2, 2, 2, 2] and folds["Actor_24"] == 6


# ----------------------------------------------------------------------------- MSP-IMPROV
EVALUATION = """UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:2.000000; V:2.000000; D:3.500000 ; N:4.000000;
rater1; Angry; Angry; A:2.0; V:2.0; D:3.0; N:4.0;
rater2; Angry; ; A:2.0; V:2.0; D:4.0; N:4.0;

UTD-IMPROV-S02N-M01-R-MF01.avi; N; A:3.000000; V:3.000000; D:3.000000 ; N:3.500000;
rater1; Neutral; ; A:3.0; V:3.0; D:3.0; N:3.0;

UTD-IMPROV-S03H-F02-P-FM02.avi; H; A:2.500000; V:4.000000; D:3.000000 ; N:3.000000;

UTD-IMPROV-S04S-M02-T-MF03.avi; X; A:3.000000; V:2.000000; D:3.000000 ; N:2.000000;

UTD-IMPROV-S05S-M02-T-MF04.avi; S; A:3.0; V:2.0; D:3.0 ; N:2.0;

UTD-IMPROV-S06S-F02-T-FM05.avi; Q; A:3.0; V:2.0; D:3.0 ; N:2.0;

UTD-IMPROV-garbage line
"""


@pytest.fixture(scope="module")
def improv_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("improv") / "MSP-IMPROV"
    for session, folder, name in ((1, "S01A/S", "S01A-F01-S-FM01"), (1, "S02N/R", "S02N-M01-R-MF01"),
                                  (2, "S03H/P", "S03H-F02-P-FM02"), (2, "S04S/T", "S04S-M02-T-MF03")):
        write_wav(root / f"session{session}/{folder}/MSP-IMPROV-{name}.wav")
        write_video(root / f"session{session}/{folder}/MSP-IMPROV-{name}.avi", fmt="avi",
                    audio=False)
    write_wav(root / "session2/S05S/T/MSP-IMPROV-S05S-M02-T-MF04.wav")  # its avi is missing
    (root / "Evaluation.txt").write_text(EVALUATION)
    return root


def test_msp_improv_consensus_labels_and_sessions(improv_root: Path):
    prepared = msp_improv.build_msp_improv(improv_root)
    assert prepared.labels == ["neu", "hap", "sad", "ang"]
    got = {r["id"]: (r["label"], r["fold"], r["speaker"], r["scenario"]) for r in prepared.records}
    assert got == {"MSP-IMPROV-S01A-F01-S-FM01": ("ang", 1, "F01", "S"),
                   "MSP-IMPROV-S02N-M01-R-MF01": ("neu", 1, "M01", "R"),
                   "MSP-IMPROV-S03H-F02-P-FM02": ("hap", 2, "F02", "P")}  # X dropped
    why = reasons(prepared.rejections)
    assert "0 .avi files for S05S-M02-T-MF04" in why["MSP-IMPROV-S05S-M02-T-MF04"]
    assert "label 'Q'" in why["S06S-F02-T-FM05"]
    assert why["Evaluation.txt:16"] == "malformed header line"
    assert folds_of(prepared.records) == [1, 2]


# ----------------------------------------------------------------------------- MELD
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    rows = {"train": ["1,Hi.,Joey,joy,positive,0,0,1,1,\"00:00:01,000\",\"00:00:02,000\"",
                      "2,No.,Ross,anger,negative,0,1,1,1,\"00:00:02,000\",\"00:00:03,000\"",
                      "3,Wow.,Monica,surprise,positive,1,0,1,2,\"00:00:01,000\",\"00:00:02,000\"",
                      "4,Eh.,Rachel,boredom,neutral,1,1,1,2,\"00:00:02,000\",\"00:00:03,000\""],
            "dev": ["1,Okay.,Joey,neutral,neutral,0,0,2,1,\"00:00:01,000\",\"00:00:02,000\"",
                    "2,Oh.,Phoebe,sadness,negative,0,1,2,1,\"00:00:01,000\",\"00:00:02,000\""],
            "test": ["1,Yes.,Ross,joy,positive,0,0,3,1,\"00:00:01,000\",\"00:00:02,000\"",
                     "2,Hm.,Chandler,neutral,neutral,0,1,3,1,\"00:00:01,000\",\"00:00:02,000\""]}
    for split, lines in rows.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}_sent_emo.csv").write_text(HEADER + "\n".join(lines) + "\n")
    clips = {"train": ["dia0_utt0", "dia0_utt1", "dia1_utt0", "dia1_utt1"],
             "dev": ["dia0_utt0"], "test": ["dia0_utt0", "dia0_utt1"]}  # dev dia0_utt1 missing
    for split, stems in clips.items():
        for stem in stems:
            write_video(root / split / meld.CLIP_DIRS[split] / f"{stem}.mp4")
    return root


def test_meld_official_split_and_labels(meld_root: Path):
    prepared = meld.build_meld(meld_root)
    assert prepared.labels == ["neu", "hap", "sad", "ang", "sur", "fea", "dis"]
    got = {r["id"]: (r["label"], r["fold"], r["partition"], r["speaker"]) for r in prepared.records}
    assert got == {"train_dia0_utt0": ("hap", 1, "train", "Joey"),
                   "train_dia0_utt1": ("ang", 1, "train", "Ross"),
                   "train_dia1_utt0": ("sur", 1, "train", "Monica"),
                   "dev_dia0_utt0": ("neu", 2, "dev", "Joey"),
                   "test_dia0_utt0": ("hap", 3, "test", "Ross"),
                   "test_dia0_utt1": ("neu", 3, "test", "Chandler")}
    clip = by_id(prepared.records)["test_dia0_utt0"]
    assert clip["wav"] == clip["video"] and clip["wav"].endswith(
        "test/output_repeated_splits_test/dia0_utt0.mp4")
    why = reasons(prepared.rejections)
    assert why["train_sent_emo.csv:5"].endswith("label 'boredom' outside ['anger', 'disgust', "
                                                "'fear', 'joy', 'neutral', 'sadness', 'surprise']")
    assert why["dev_dia0_utt1"] == "dev_sent_emo.csv:3: missing file"
    # one test fold; dev = the official dev partition, not drawn speakers
    assert folds_of(prepared.records) == [3]
    split = split_fold(prepared.records, 3)
    assert [r["id"] for r in split.dev] == ["dev_dia0_utt0"] and len(split.train) == 3
    with pytest.raises(ValueError, match="not the official test partition"):
        split_fold(prepared.records, 1)
    four = meld.build_meld(meld_root, classes="4")
    assert "train_dia1_utt0" not in by_id(four.records)  # surprise dropped


def test_meld_cli_says_not_speaker_independent(meld_root: Path, tmp_path: Path):
    out = tmp_path / "data"
    assert main(["prepare", "meld", str(meld_root), "--out", str(out)]) == 1
    assert "NOT speaker-independent" in read_prepare_meta(out)["options"]["protocol"]
    assert read_manifest(out)[0]["partition"] == "train"


def test_meld_runs_and_cv_summaries_say_not_speaker_independent(meld_root: Path, tmp_path: Path):
    """A run on the official partition and a CV summary over such runs carry the prepare.json
    warning in their protocol, not the speaker-disjoint wording of the other corpora."""
    from foalnet.config import preset
    from foalnet.data.protocol import OFFICIAL_SPLIT_PROTOCOL
    from foalnet.train.cv import summarize
    from foalnet.train.run import load_fold

    out = tmp_path / "data"
    assert main(["prepare", "meld", str(meld_root), "--out", str(out)]) == 1
    cfg = preset("tiny").override([f"data.data_dir={out}", "data.fold=3", "model.modality=audio",
                                    "model.use_avel=false", "model.use_mem=false"])
    fold = load_fold(cfg)
    assert fold.protocol.startswith(OFFICIAL_SPLIT_PROTOCOL) and not fold.speaker_independent
    assert "NOT speaker-independent" in fold.protocol and "held-out speakers" not in fold.protocol
    test = {"ua": 0.5, "wa": 0.5, "macro_f1": 0.5, "confusion": [[1, 1], [1, 1]]}
    run = {"test": test, "labels": ["neu", "hap"], "speaker_independent": fold.speaker_independent}
    summary = summarize({3: run}, cfg, rejected=[])
    assert summary["protocol"].startswith(OFFICIAL_SPLIT_PROTOCOL) and summary["speaker_independent"] is False
    speaker_folds = summarize({1: {**run, "speaker_independent": True}}, cfg, rejected=[])
    assert speaker_folds["protocol"].startswith("leave-one-fold-out; best epoch selected on a speaker-disjoint")
    assert speaker_folds["speaker_independent"] is True


# ----------------------------------------------------------------------------- real corpora
def _corpus_root(name: str) -> Path:
    root = os.environ.get(f"FOALNET_{name}_ROOT")
    if not root:
        pytest.skip(f"set FOALNET_{name}_ROOT to the corpus folder")
    return Path(root)


@pytest.mark.corpus
def test_real_cremad_has_7442_clips():
    root = _corpus_root("CREMAD")
    clips, rejections = cremad.find_clips(root)
    assert len(clips) == cremad.OFFICIAL_CLIPS == 7442 and rejections == []
    assert len({c.actor for c in clips}) == 91


@pytest.mark.corpus
def test_real_ravdess_speech_counts():
    root = _corpus_root("RAVDESS")
    files = ravdess.find_files(root)
    kinds = Counter(ravdess.parse_name(p)["modality"] for p in files
                    if ravdess.parse_name(p)["channel"] == "01")
    assert kinds["03"] == 1440 and kinds["01"] + kinds["02"] == 2880


@pytest.mark.corpus
def test_real_msp_improv_counts():
    root = _corpus_root("MSP_IMPROV")
    clips, rejections = msp_improv.parse_evaluation(root / msp_improv.LABEL_FILE)
    assert len(clips) == msp_improv.OFFICIAL["clips"] == 8438 and rejections == []
    four = Counter(msp_improv.CODES[c] for _, c, _ in clips if msp_improv.CODES[c])
    assert dict(four) == msp_improv.OFFICIAL["four"]


@pytest.mark.corpus
def test_real_meld_rows_per_split():
    root = _corpus_root("MELD")
    for split, want in meld.OFFICIAL.items():
        assert len(meld.read_split(meld.split_paths(root, split)[0])) == want
    assert sum(meld.OFFICIAL.values()) == 13708


# ----------------------------------------------------------------------------- faces
def test_face_cropper_on_a_real_face_then_no_face():
    """The astronaut photograph at 0.6x in a 960x720 frame (face 59 px, 6 % of the width: the
    old 160 px / one-fifth settings never saw it); then frames without it: the box is held
    `hold` frames, then the full frame is served, as the cache meta says."""
    pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    from foalnet.data.video import FaceCropper

    frame = np.full((720, 960, 3), 110, np.uint8)
    frame[200:507, 300:607] = cv2.resize(skimage_data.astronaut(), (307, 307))
    cropper = FaceCropper(hold=4, every=1)
    face = cropper(frame, key="face:full")
    assert 60 <= face.shape[0] <= 120 and 60 <= face.shape[1] <= 120 and cropper.fallbacks == 0
    blank = np.full_like(frame, 110)
    served = [cropper(blank, key="face:full").shape for _ in range(6)]
    assert served[:4] == [face.shape] * 4 and served[4:] == [blank.shape] * 2
    assert cropper.fallbacks == 2
    settings = cropper.settings()
    assert settings["pick"] == "largest" and settings["min_face"] == 0.05
    assert settings["no_face"] == "reuse the last box for up to 4 frames, then the full region"
    cropper.reset()
    assert cropper(blank, key="face:full") is blank  # nothing held across videos
