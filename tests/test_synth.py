"""`foalnet synth`: the IEMOCAP layout, media formats, timeline consistency and emotion design."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from foalnet.data import synth
from foalnet.data.iemocap import parse_release
from foalnet.data.manifest import read_manifest

SUMMARY = re.compile(r"^\[\d+\.\d{4} - \d+\.\d{4}\]\t\S+\t[a-z]{3}\t\[[\d., ]+\]$")


def test_layout_like_the_release(synth_root: Path):
    assert synth_root.name == "IEMOCAP_full_release"
    assert sorted(p.name for p in synth_root.glob("Session*")) == [f"Session{i}" for i in range(1, 6)]
    utts, _ = parse_release(synth_root)
    dialogs = {u.dialog for u in utts}
    assert any("_impro" in d for d in dialogs) and any("_script" in d for d in dialogs)
    assert {d[5] for d in dialogs} == {"F", "M"}
    assert len({u.speaker for u in utts}) == 10
    codes = {u.code for u in utts}
    assert {"neu", "hap", "exc", "sad", "ang"} <= codes and codes & {"fru", "sur", "xxx", "oth"}
    for label_file in synth_root.glob("Session*/dialog/EmoEvaluation/*.txt"):
        lines = label_file.read_text().splitlines()
        assert lines[0].startswith("%")
        summaries = [ln for ln in lines if ln.startswith("[")]
        assert summaries and all(SUMMARY.match(ln) for ln in summaries)
        assert any(ln.startswith("C-E") for ln in lines) and any(ln.startswith("A-E") for ln in lines)
        assert (label_file.parent.parent / "avi/DivX" / f"{label_file.stem}.avi").is_file()
        assert (label_file.parent.parent / "wav" / f"{label_file.stem}.wav").is_file()
    for u in utts:
        wav = synth_root / f"Session{u.session}/sentences/wav/{u.dialog}/{u.id}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == pytest.approx((u.end - u.start) * 16000, abs=2)


def test_video_format_and_spans(synth_root: Path):
    utts, _ = parse_release(synth_root)
    ends = defaultdict(float)
    for u in utts:
        ends[u.dialog] = max(ends[u.dialog], u.end)
    for video in synth_root.glob("Session*/dialog/avi/DivX/*.avi"):
        with av.open(str(video)) as container:
            assert container.format.name == "avi"
            vs = container.streams.video[0]
            assert (vs.codec_context.name, vs.width, vs.height) == ("mpeg4", 720, 480)
            assert vs.average_rate == 30
            assert container.streams.audio[0].codec_context.name == "pcm_s16le"
            assert container.duration / 1e6 >= ends[video.stem]


def test_dialog_wav_holds_each_utterance_at_its_span(synth_root: Path):
    utts, _ = parse_release(synth_root)
    for dialog in sorted({u.dialog for u in utts})[:2]:
        session = dialog[4]
        track, rate = sf.read(synth_root / f"Session{session}/dialog/wav/{dialog}.wav")
        assert rate == 16000 and track.shape[1] == 2
        for u in (u for u in utts if u.dialog == dialog):
            wav, _ = sf.read(synth_root / f"Session{session}/sentences/wav/{dialog}/{u.id}.wav")
            s = int(round(u.start * 16000))
            channel = 0 if u.side == "left" else 1  # channel 0 = the left (marker) actor
            np.testing.assert_allclose(track[s:s + len(wav), channel], wav, atol=1e-4)


def test_speaker_mouth_moves_on_the_speaker_side(prepared_dir: Path):
    """Marker wearer on the left, spans pointing at the speech: the speaker's mouth region
    varies over the span, the listener's stays still."""
    records = read_manifest(prepared_dir)
    dialog = records[0]["dialog"]
    recs = [r for r in records if r["dialog"] == dialog]
    with av.open(recs[0]["video"]) as container:
        frames = [(f.time, f.to_ndarray(format="gray")) for f in container.decode(video=0)]
    wins = 0
    for r in recs:
        span = np.stack([g for t, g in frames if r["start"] <= t <= r["end"]]).astype(np.float32)
        mouth = span[:, 260:420, :]  # (T, rows around the mouths, 720)
        left, right = mouth[:, :, :360].std(axis=0).mean(), mouth[:, :, 360:].std(axis=0).mean()
        speaker, listener = (left, right) if r["side"] == "left" else (right, left)
        wins += speaker > 2 * listener
    assert wins == len(recs)


def test_voice_carries_arousal():
    rng = np.random.default_rng(0)
    voice = synth.Voice(f0=120.0, gain_db=-28.0, tilt=2.0, syl_rate=3.5, formant_scale=1.0,
                        breath=0.05)
    calm, _ = synth.synth_voice(rng, voice, 0.0, 32000)
    aroused, _ = synth.synth_voice(rng, voice, 1.0, 32000)
    db = lambda x: 20 * np.log10(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    assert db(aroused) - db(calm) == pytest.approx(9.0, abs=1.5)  # louder by design (+9 dB)

    def centroid(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return float((power * np.fft.rfftfreq(len(x), 1 / 16000)).sum() / power.sum())

    assert centroid(aroused) > 1.5 * centroid(calm)  # higher pitch, tenser voice


def test_face_carries_valence_not_class():
    face = synth.make_actor(np.random.default_rng(1), 1, "F").face
    cx = (synth.HALF + 2 * synth.PAD) / 2
    my = face.cy + synth.PAD + face.mouth_dy

    def lip_rows(img: np.ndarray, x: float) -> float:
        col = img[:, int(x)]
        rows = np.nonzero((col == (120, 20, 35)).all(axis=1))[0]
        return rows[(rows > my - 70) & (rows < my + 70)].mean()

    happy, sad = synth.draw_face(face, 1.0, 0.0), synth.draw_face(face, -1.0, 0.0)
    corner = cx + 0.9 * face.mouth_w
    assert lip_rows(happy, corner) < lip_rows(happy, cx) - 15  # corners up
    assert lip_rows(sad, corner) > lip_rows(sad, cx) + 15  # corners down
    # ang and sad share the negative valence, so their faces are drawn the same way
    assert synth.EMOTIONS["ang"][1] == synth.EMOTIONS["sad"][1] < 0 < synth.EMOTIONS["hap"][1]
    assert synth.EMOTIONS["ang"][0] > synth.EMOTIONS["sad"][0] + 1.0


def test_deterministic_in_seed():
    spec = synth.SIZES["tiny"]
    actors = {g: synth.make_actor(np.random.default_rng(3), 1, g) for g in "FM"}
    dspec = synth.dialog_specs(1, 1)[0]
    a = synth.make_dialog(np.random.default_rng([7, 1]), dspec, actors, spec)
    b = synth.make_dialog(np.random.default_rng([7, 1]), dspec, actors, spec)
    c = synth.make_dialog(np.random.default_rng([8, 1]), dspec, actors, spec)
    assert [(u.id, u.code, u.start) for u in a] == [(u.id, u.code, u.start) for u in b]
    assert all(np.array_equal(x.wave, y.wave) for x, y in zip(a, b))
    assert [(u.code, u.start) for u in a] != [(u.code, u.start) for u in c]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path):
    (tmp_path / "IEMOCAP_full_release").mkdir()
    (tmp_path / "IEMOCAP_full_release" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not written by `foalnet synth`"):
        synth.generate(tmp_path, size="tiny", workers=1)
    with pytest.raises(ValueError, match="unknown size"):
        synth.generate(tmp_path / "other", size="huge")
