"""`foalnet prepare iemocap|csv|scp`: idempotence, bad inputs, folds, exit codes."""
from __future__ import annotations

import json
import logging
import re
import shutil
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from foalnet.cli import main
from foalnet.data.manifest import read_manifest, read_prepare_meta, read_rejected


def _prepare(root: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "iemocap", str(root), "--out", str(out), *extra])


def test_prepare_is_idempotent_and_checks_itself(synth_root: Path, tmp_path: Path):
    out = tmp_path / "data"
    assert _prepare(synth_root, out) == 0
    manifest = out / "manifest.jsonl"
    stamp = manifest.stat().st_mtime_ns
    assert _prepare(synth_root, out) == 0 and manifest.stat().st_mtime_ns == stamp  # skipped
    assert _prepare(synth_root, out, "--classes", "4-no-exc") == 0  # other options: redone
    assert read_prepare_meta(out)["classes"] == "4-no-exc"
    n = len(read_manifest(out))
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))  # damage: one line lost
    assert _prepare(synth_root, out, "--classes", "4-no-exc") == 2
    assert _prepare(synth_root, out, "--classes", "4-no-exc", "--force") == 0
    assert len(read_manifest(out)) == n


def test_usage_errors_exit_2(tmp_path: Path):
    assert _prepare(tmp_path / "nowhere", tmp_path / "d") == 2
    with pytest.raises(SystemExit) as err:
        main(["prepare", "iemocap", str(tmp_path), "--out", str(tmp_path), "--classes", "9"])
    assert err.value.code == 2


def test_bad_inputs_are_rejected_and_the_rest_kept(synth_root: Path, prepared_dir: Path,
                                                    tmp_path: Path):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(synth_root, root)
    good = read_manifest(prepared_dir)
    by_dialog = defaultdict(list)
    for r in good:
        by_dialog[r["dialog"]].append(r)
    dialogs = sorted(by_dialog)
    lost_video = dialogs[0]
    (root / "Session1/dialog/avi/DivX" / f"{lost_video}.avi").unlink()
    victims = by_dialog[dialogs[1]][:3]
    local = {r["id"]: root / Path(r["wav"]).relative_to(synth_root) for r in victims}
    data = local[victims[0]["id"]].read_bytes()
    local[victims[0]["id"]].write_bytes(data[: len(data) // 2])  # truncated
    local[victims[1]["id"]].write_bytes(b"")  # empty
    local[victims[2]["id"]].unlink()  # missing
    bad_code = by_dialog[dialogs[2]][0]
    label_file = root / f"Session{bad_code['session']}/dialog/EmoEvaluation/{bad_code['dialog']}.txt"
    text = label_file.read_text()
    label_file.write_text(re.sub(rf"(\t{bad_code['id']}\t)\w+\t", r"\1zzz\t", text, count=1))
    out = tmp_path / "data"
    assert _prepare(root, out) == 1
    rejected = {r["id"]: r for r in read_rejected(out)}
    expected = {victims[0]["id"]: "truncated", victims[1]["id"]: "empty file",
                victims[2]["id"]: "missing file", bad_code["id"]: "outside the IEMOCAP codes"}
    expected.update({r["id"]: "missing video" for r in by_dialog[lost_video]})
    assert set(rejected) == set(expected)
    for utt_id, reason in expected.items():
        assert reason in rejected[utt_id]["reason"] and rejected[utt_id]["path"]
    kept = read_manifest(out)
    assert len(kept) == len(good) - len(expected)
    assert read_prepare_meta(out)["rejected"] == len(expected)


def _write_video_with_audio(path: Path, seconds: float, rate: int = 44100) -> None:
    """A small mp4 (mpeg4 video + 2-channel AAC) standing in for a single-speaker clip."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        vs = container.add_stream("mpeg4", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = container.add_stream("aac", rate=rate)
        aus.layout = "stereo"
        for i in range(int(seconds * 25)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), "rgb24")
            for packet in vs.encode(frame):
                container.mux(packet)
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
        aframe = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        aframe.sample_rate, aframe.pts, aframe.time_base = rate, 0, Fraction(1, rate)
        for packet in list(aus.encode(aframe)) + list(aus.encode()) + list(vs.encode()):
            container.mux(packet)


def _csv_corpus(root: Path) -> Path:
    """6 speakers, mixed media: 16 kHz wav, 44.1 kHz stereo wav, a video with audio track."""
    rows = ["path,label,speaker,start,end"]
    for s in range(6):
        for i in range(s + 1):  # unequal speaker sizes: 1..6 utterances
            name = f"spk{s}_{i}.wav"
            if s == 1:
                sf.write(root / name, np.zeros((44100, 2), np.float32) + 0.1, 44100)
            else:
                sf.write(root / name, np.full(16000, 0.1, np.float32), 16000)
            rows.append(f"{name},{'ab'[i % 2]},spk{s},,")
    _write_video_with_audio(root / "clip.mp4", 1.0)
    rows.append("clip.mp4,a,spk0,0.2,0.8")
    rows.append("spk2_0.wav,zz,spk2,,")  # label outside the set
    rows.append("gone.wav,a,spk3,,")  # missing file
    rows.append("spk3_0.wav,a,spk3,0.5,3.0")  # span outside the file
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_prepare_csv_speaker_folds_media_and_rejections(tmp_path: Path):
    src = tmp_path / "media"
    src.mkdir()
    csv_path = _csv_corpus(src)
    out = tmp_path / "data"
    code = main(["prepare", "csv", str(csv_path), "--out", str(out), "--num-folds", "3",
                 "--labels", "a,b"])
    assert code == 1
    reasons = sorted(r["reason"] for r in read_rejected(out))
    assert len(reasons) == 3
    assert any("outside the set" in r for r in reasons) and any("missing file" in r for r in reasons)
    assert any("outside the file" in r for r in reasons)
    records = read_manifest(out)
    assert len(records) == 21 + 1
    folds: dict[str, set] = defaultdict(set)
    for r in records:
        folds[r["speaker"]].add(r["fold"])
    assert all(len(f) == 1 for f in folds.values())  # speaker-disjoint
    sizes = defaultdict(int)
    for r in records:
        sizes[r["fold"]] += 1
    # largest speaker first into the smallest fold: spk5(6)->1, spk4(5)->2, spk3(4)->3,
    # spk2(3)->3, spk0(1+clip=2)->2, spk1(2)->1: sizes 8 / 7 / 7
    assert sorted(sizes.values()) == [7, 7, 8]
    clip = next(r for r in records if r["wav"].endswith("clip.mp4"))
    assert clip["video"] == clip["wav"] and clip["side"] == "full"
    assert (clip["start"], clip["end"], clip["audio_start"], clip["audio_end"]) == (0.2, 0.8, 0.2, 0.8)
    assert read_prepare_meta(out)["labels"] == ["a", "b"]

    from foalnet.data.audio import load_audio

    assert load_audio(clip["wav"], start=clip["audio_start"], end=clip["audio_end"]).shape[0] == \
        pytest.approx(9600, abs=2)
    stereo = next(r for r in records if r["speaker"] == "spk1")
    assert load_audio(stereo["wav"]).shape == (16000,)


def test_prepare_csv_missing_column_is_usage_error(tmp_path: Path):
    (tmp_path / "l.csv").write_text("path,label\nx.wav,a\n")
    assert main(["prepare", "csv", str(tmp_path / "l.csv"), "--out", str(tmp_path / "d")]) == 2


def test_prepare_scp_lists(prepared_dir: Path, tmp_path: Path):
    records = read_manifest(prepared_dir)
    train = [r for r in records if r["session"] != 5]
    test = [r for r in records if r["session"] == 5]
    (tmp_path / "train.scp").write_text("".join(f"{r['id']} {r['wav']} {r['label']}\n" for r in train)
                                        + "Ses01F_impro09_F000 /nowhere/x.wav neu\n")
    (tmp_path / "test.scp").write_text("".join(f"{r['id']} {r['wav']} {r['label']}\n" for r in test)
                                       + f"odd_one {test[0]['wav']} fru\n" + "two_fields_only x.wav\n")
    out = tmp_path / "data"
    code = main(["prepare", "scp", str(tmp_path / "train.scp"), str(tmp_path / "test.scp"),
                 "--out", str(out)])
    assert code == 1
    rejected = {r["id"]: r for r in read_rejected(out)}
    assert set(rejected) == {"Ses01F_impro09_F000", "odd_one", f"test.scp:{len(test) + 2}"}
    assert "expected `id path label`" in rejected[f"test.scp:{len(test) + 2}"]["reason"]
    got = {r["id"]: r for r in read_manifest(out)}
    assert len(got) == len(records)
    for r in records:
        assert (got[r["id"]]["fold"], got[r["id"]]["speaker"], got[r["id"]]["label"]) == \
            (r["session"], r["speaker"], r["label"])
    assert json.loads((out / "prepare.json").read_text())["folds"] == [1, 2, 3, 4, 5]


def test_prepare_csv_session_column_gives_folds_and_rerun_keeps_status(tmp_path: Path):
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / name, np.full(8000, 0.1, np.float32), 16000)
    (tmp_path / "l.csv").write_text("path,label,speaker,session\n"
                                    "a.wav,x,s1,3\nb.wav,y,s2,7\nc.wav,x,s1,3\nmissing.wav,y,s2,7\n")
    # --labels: each class is in one session only, kept because listed (else rejected: thin)
    args = ["prepare", "csv", str(tmp_path / "l.csv"), "--out", str(tmp_path / "d"), "--labels", "x,y"]
    assert main(args) == 1
    assert {r["id"]: r["fold"] for r in read_manifest(tmp_path / "d")} == {"a": 3, "b": 7, "c": 3}
    assert read_prepare_meta(tmp_path / "d")["labels"] == ["x", "y"]
    assert main(args) == 1  # skipped, but the earlier rejection still decides the status


def test_prepare_csv_iemocap_names_keep_the_paper_logit_order(tmp_path: Path):
    """Labels neu/hap/sad/ang in any row order -> prepare.json labels neu, hap, sad, ang (the
    paper's and import-reference's order), not alphabetical; a subset keeps that order."""
    for name in ("a", "b", "c", "d", "e", "f", "g", "h"):
        sf.write(tmp_path / f"{name}.wav", np.full(8000, 0.1, np.float32), 16000)
    # two speakers -> two folds, every class in both (so every training fold has it)
    (tmp_path / "l.csv").write_text("path,label,speaker\na.wav,sad,s1\nb.wav,ang,s1\n"
                                    "c.wav,neu,s1\nd.wav,hap,s1\ne.wav,hap,s2\nf.wav,neu,s2\n"
                                    "g.wav,ang,s2\nh.wav,sad,s2\n")
    assert main(["prepare", "csv", str(tmp_path / "l.csv"), "--out", str(tmp_path / "d"),
                 "--num-folds", "2"]) == 0
    assert read_prepare_meta(tmp_path / "d")["labels"] == ["neu", "hap", "sad", "ang"]
    (tmp_path / "l2.csv").write_text("path,label,speaker\na.wav,sad,s1\nb.wav,ang,s1\n"
                                     "g.wav,ang,s2\nh.wav,sad,s2\n")
    assert main(["prepare", "csv", str(tmp_path / "l2.csv"), "--out", str(tmp_path / "d2"),
                 "--num-folds", "2"]) == 0
    assert read_prepare_meta(tmp_path / "d2")["labels"] == ["sad", "ang"]


def test_write_text_atomic_replaces_whole_or_not_at_all(tmp_path: Path):
    """The one atomic writer (manifests, store metadata, model folders): a failed write keeps the
    old file and leaves no temp file behind."""
    from foalnet.data.files import write_text_atomic

    path = tmp_path / "manifest.jsonl"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    with pytest.raises(TypeError):
        write_text_atomic(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["manifest.jsonl"]


def _wavs(root: Path, *names: str) -> None:
    for name in names:
        sf.write(root / name, np.full(16000, 0.1, np.float32), 16000)


def test_prepare_csv_rejects_empty_speaker_and_repeated_audio_per_row(tmp_path: Path):
    """Issue 14: an empty speaker was accepted as speaker "", and one wav under a second id
    landed in a training and a test fold. Both are rejected per row, naming file and line."""
    _wavs(tmp_path, "a.wav", "b.wav", "c.wav", "d.wav", "long.wav")
    (tmp_path / "l.csv").write_text(
        "path,label,speaker,id,start,end\n"
        "a.wav,x,s1,,,\nb.wav,y,s1,,,\nc.wav,x,s2,,,\nd.wav,y,s2,,,\n"
        "a.wav,x,s3,a_again,,\n"          # line 6: the same file as line 2, under another id
        "b.wav,y,,,,\n"                   # line 7: empty speaker (and b.wav again)
        "long.wav,x,s3,p1,0.0,0.5\n"      # line 8
        "long.wav,y,s4,p2,0.5,1.0\n"      # line 9: another span of the same file: distinct
        "long.wav,x,s4,p3,0.2,0.6\n")     # line 10: overlaps line 8
    out = tmp_path / "d"
    assert main(["prepare", "csv", str(tmp_path / "l.csv"), "--out", out.as_posix(),
                 "--num-folds", "2", "--labels", "x,y"]) == 1
    rejected = {r["id"]: r["reason"] for r in read_rejected(out)}
    assert set(rejected) == {"a_again", "b_7", "p3"}
    assert rejected["a_again"].startswith("l.csv:6: same audio as item 'a' at l.csv:2")
    assert rejected["b_7"].startswith("l.csv:7: empty speaker")
    assert rejected["p3"].startswith("l.csv:10: same audio as item 'p1' at l.csv:8")
    wavs = [(r["wav"], r["audio_start"]) for r in read_manifest(out)]
    assert len(wavs) == len(set(wavs)) == 6 and all(r["speaker"] for r in read_manifest(out))


def test_same_audio_under_two_ids_is_rejected_for_scp_and_refused_in_a_manifest(
        prepared_dir: Path, tmp_path: Path):
    from foalnet.data.manifest import ManifestError, save_preparation

    records = read_manifest(prepared_dir)
    first, second = records[0], records[1]
    (tmp_path / "a.scp").write_text(
        f"{first['id']} {first['wav']} {first['label']}\n"
        f"{second['id']} {second['wav']} {second['label']}\n"
        f"copy_of_first {first['wav']} {first['label']}\n"       # same wav, new id: rejected
        f"{second['id']} {second['wav']} {second['label']}\n"    # exact repeat: one item
        f"{second['id']} {first['wav']} {second['label']}\n")    # same id, other wav: conflict
    out = tmp_path / "data"
    assert main(["prepare", "scp", str(tmp_path / "a.scp"), "--out", str(out)]) == 1
    rejected = {r["id"]: r["reason"] for r in read_rejected(out)}
    assert set(rejected) == {"copy_of_first", f"a.scp:{second['id']}"}
    assert f"same audio as item {first['id']!r}" in rejected["copy_of_first"]
    assert "listed again with another wav" in rejected[f"a.scp:{second['id']}"]
    assert sorted(r["id"] for r in read_manifest(out)) == sorted([first["id"], second["id"]])
    # the contract itself: a manifest with one audio twice is never written
    twin = dict(second, wav=first["wav"])
    with pytest.raises(ManifestError, match="hold the same audio"):
        save_preparation(tmp_path / "x", "scp", None, ["neu"], [first, twin], [], {})


def test_prepare_csv_without_labels_rejects_classes_missing_from_a_training_fold(
        tmp_path: Path, caplog):
    """Issue 14: `calm` with one clip silently became a fifth class and made the logit order
    alphabetical. Without --labels it is rejected (it cannot be in every training fold), the
    order stays the paper's, and the class set is printed with counts."""
    caplog.set_level(logging.INFO)
    rows = ["path,label,speaker"]
    for spk in range(4):
        for label in ("neu", "hap", "sad", "ang"):
            name = f"{label}{spk}.wav"
            _wavs(tmp_path, name)
            rows.append(f"{name},{label},s{spk}")
    _wavs(tmp_path, "calm.wav")
    rows.append("calm.wav,calm,s0")  # line 18
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "d"
    assert main(["prepare", "csv", str(tmp_path / "l.csv"), "--out", str(out), "--num-folds", "2"]) == 1
    [rej] = read_rejected(out)
    assert rej["id"] == "calm" and rej["reason"].startswith(
        "l.csv:18: class 'calm' has 1 item(s), all in fold(s) [1]")
    assert "--labels" in rej["reason"]
    assert read_prepare_meta(out)["labels"] == ["neu", "hap", "sad", "ang"]
    assert "classes in logit order (no --labels: IEMOCAP names in the paper's order" in caplog.text
    assert "0=neu (4), 1=hap (4), 2=sad (4), 3=ang (4)" in caplog.text
    # listed in --labels it is the user's choice: kept, with a warning and the given order
    caplog.clear()
    out2 = tmp_path / "d2"
    assert main(["prepare", "csv", str(tmp_path / "l.csv"), "--out", str(out2), "--num-folds", "2",
                 "--labels", "neu,hap,sad,ang,calm"]) == 0
    assert read_prepare_meta(out2)["counts"]["labels"]["calm"] == 1
    assert "class 'calm' is in fold(s) [1] only" in caplog.text
    assert "4=calm (1)" in caplog.text
