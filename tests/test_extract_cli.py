"""`foalnet extract-visual`: end to end on the synthetic corpus, reuse, resume, keying, bad input."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from foalnet.cli import main
from foalnet.data.manifest import make_record, read_manifest, write_manifest
from foalnet.features.extract import embed_video, extract_visual
from foalnet.features.store import VisualFeatureStore
from foalnet.features.tiny import TinyVisualEncoder
from test_features import clip_dir  # noqa: F401  (a fixture: tiny CLIP saved to a folder)
from test_video_io import make_avi


def _copy_data(prepared_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared DATA_DIR (the videos stay where the fixture wrote them)."""
    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data, ignore=shutil.ignore_patterns("visual"))
    return data


def _rejected(data: Path, slug: str = "tiny") -> list[dict]:
    text = (data / "visual" / slug / "rejected.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _expected_frames(start: float, end: float, fps: float = 30.0) -> int:
    """Frames whose display interval [i/fps, (i+1)/fps) overlaps [start, end)."""
    return math.ceil(end * fps) - math.floor(start * fps)


@pytest.fixture
def data(prepared_dir, tmp_path) -> Path:
    return _copy_data(prepared_dir, tmp_path)


def test_extracts_every_utterance_of_the_synthetic_corpus(data, caplog):
    caplog.set_level(logging.INFO)
    assert main(["extract-visual", str(data), "--encoder", "tiny", "--no-progress"]) == 0
    records = read_manifest(data)
    store = VisualFeatureStore.open(data)
    assert store.slug == "tiny" and store.dim == 128 and len(store) == len(records)
    meta = store.meta
    assert (meta["encoder"], meta["crop"], meta["fps"], meta["dim"]) == ("tiny", "side", None, 128)
    for rec in records[:6]:
        feats = store.load(rec["id"])
        assert feats.shape == (_expected_frames(rec["start"], rec["end"]), 128)
        assert np.isfinite(feats).all()
    # training features == what inference computes for the same span and side
    rec = next(r for r in records if r["side"] == "right")
    same = embed_video(rec["video"], TinyVisualEncoder(), rec["side"], rec["start"], rec["end"])
    # equal up to one float16 step: the frames go through the encoder in other batches, and CPU
    # matrix kernels may round differently by batch size (seen on an AMD EPYC VM)
    np.testing.assert_allclose(store.load(rec["id"]), same, rtol=2**-10, atol=2**-14)
    assert f"done {len(records)}, reused 0, failed 0" in caplog.text
    assert _rejected(data) == []


def test_second_run_reuses_everything_and_rewrites_nothing(data):
    first = extract_visual(data, TinyVisualEncoder(), progress=False)
    arrays = sorted((data / "visual" / "tiny" / "arrays").iterdir())
    stamps = [p.stat().st_mtime_ns for p in arrays]
    index_lines = (data / "visual" / "tiny" / "index.jsonl").read_text().count("\n")
    second = extract_visual(data, TinyVisualEncoder(), progress=False)
    assert (second.done, second.reused, second.failed, second.frames) == (0, first.done, 0, 0)
    assert [p.stat().st_mtime_ns for p in arrays] == stamps
    assert (data / "visual" / "tiny" / "index.jsonl").read_text().count("\n") == index_lines


def test_changed_span_is_recomputed_the_rest_reused(data):
    first = extract_visual(data, TinyVisualEncoder(), progress=False)
    records = read_manifest(data)
    records[0]["end"] = records[0]["start"] + 0.5
    write_manifest(data, records)
    again = extract_visual(data, TinyVisualEncoder(), progress=False)
    assert (again.done, again.reused) == (1, first.done - 1)
    assert VisualFeatureStore.open(data).load(records[0]["id"]).shape[0] == \
        _expected_frames(records[0]["start"], records[0]["end"])


class _Interrupting(TinyVisualEncoder):
    """Stops the run (like Ctrl-C) at the n-th encoder call."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def embed_images(self, images):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().embed_images(images)


def test_interrupted_run_resumes(data):
    total = len(read_manifest(data))
    with pytest.raises(KeyboardInterrupt):
        extract_visual(data, _Interrupting(calls=6), batch_size=8, progress=False)
    kept = len(VisualFeatureStore.open(data))
    assert 0 < kept < total
    resumed = extract_visual(data, TinyVisualEncoder(), batch_size=8, progress=False)
    assert (resumed.reused, resumed.done, resumed.failed) == (kept, total - kept, 0)
    fresh = extract_visual(data, TinyVisualEncoder(), batch_size=64, progress=False)
    assert fresh.reused == total


def test_crop_and_fps_policies_get_their_own_folders(data):
    assert main(["extract-visual", str(data), "--encoder", "tiny", "--fps", "10",
                 "--crop", "full", "--no-progress"]) == 0
    store = VisualFeatureStore.open(data, encoder="tiny-full-fps10")
    assert (store.meta["crop"], store.meta["fps"]) == ("full", 10.0)
    rec = read_manifest(data)[0]
    assert store.load(rec["id"]).shape[0] == pytest.approx((rec["end"] - rec["start"]) * 10, abs=1)


def test_face_crop(data):
    pytest.importorskip("cv2")
    records = read_manifest(data)[:3]
    write_manifest(data, records)
    assert main(["extract-visual", str(data), "--encoder", "tiny", "--crop", "face",
                 "--no-progress"]) == 0
    store = VisualFeatureStore.open(data, encoder="tiny-face")
    assert store.meta["face"]["detector"] == "haar_frontalface_default"
    assert all(store.has(r["id"]) for r in records)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def mixed(tmp_path) -> Path:
    """A DATA_DIR with two good items and every kind of bad one."""
    good = make_avi(tmp_path / "good.avi", seconds=2.0, width=320, height=96)
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")

    def rec(i, video, start, end, side="left"):
        return make_record(id=f"u{i}", label="neu", corpus="csv", wav=str(video), video=video,
                           start=start, end=end, side=side, fold=1)

    data = tmp_path / "data"
    data.mkdir()
    write_manifest(data, [
        rec(0, str(good), 0.0, 1.0),
        rec(1, str(good), 0.5, 1.9, "right"),
        rec(2, str(tmp_path / "missing.avi"), 0.0, 1.0),
        rec(3, str(garbage), 0.0, 1.0),
        rec(4, str(empty), 0.0, 1.0),
        rec(5, str(good), 5.0, 6.0),
        rec(6, None, None, None),
    ])
    return data


def test_bad_items_are_reported_and_the_rest_is_done(mixed, caplog, capsys):
    assert main(["extract-visual", str(mixed), "--encoder", "tiny", "--no-progress"]) == 1
    store = VisualFeatureStore.open(mixed)
    assert store.load("u0").shape == (30, 128) and store.load("u1").shape == (42, 128)
    rejected = {r["id"]: r for r in _rejected(mixed)}
    assert sorted(rejected) == ["u2", "u3", "u4", "u5"]  # u6 has no video: audio-only, no failure
    assert rejected["u2"]["reason"] == "file not found"
    assert rejected["u2"]["path"].endswith("missing.avi")
    assert "cannot open" in rejected["u3"]["reason"]
    assert rejected["u4"]["reason"] == "empty file"
    assert "outside the video" in rejected["u5"]["reason"]
    for uid in rejected:
        assert f"rejected {uid}" in caplog.text
    out = capsys.readouterr().out
    assert "failed 4" in out and "1 audio-only records (no video) skipped" in out


def test_audio_only_manifest_is_a_usage_error_and_creates_nothing(tmp_path):
    """An audio-only corpus (scp lists, audio csv) has nothing to extract: exit 2 with the reason,
    no visual/ folder, instead of one rejection per record."""
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(data, [make_record(id=f"a{i}", label="neu", corpus="scp", wav=f"/x/{i}.wav", fold=1)
                          for i in range(3)])
    with pytest.raises(ValueError, match="no record of the manifest has a video"):
        extract_visual(data, TinyVisualEncoder(), progress=False)
    assert main(["extract-visual", str(data), "--encoder", "tiny", "--no-progress"]) == 2
    assert not (data / "visual").exists()


def test_a_broken_video_never_loses_what_was_extracted(mixed, tmp_path):
    extract_visual(mixed, TinyVisualEncoder(), progress=False)
    before = np.array(VisualFeatureStore.open(mixed).load("u0"))
    (tmp_path / "good.avi").write_bytes(b"RIFF broken now")
    report = extract_visual(mixed, TinyVisualEncoder(), progress=False)
    assert report.done == 0 and {"u0", "u1"} <= {r["id"] for r in report.rejected}
    np.testing.assert_array_equal(VisualFeatureStore.open(mixed).load("u0"), before)


def test_usage_errors_exit_2(tmp_path, mixed):
    assert main(["extract-visual", str(tmp_path / "nothing"), "--encoder", "tiny"]) == 2
    assert main(["extract-visual", str(mixed), "--encoder", str(tmp_path / "no-such-clip")]) == 2
    assert main(["extract-visual", str(mixed), "--encoder", "tiny", "--batch-size", "0"]) == 2
    extract_visual(mixed, TinyVisualEncoder(), progress=False)
    meta_path = mixed / "visual" / "tiny" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "seed": 7}))  # made with another projection
    assert main(["extract-visual", str(mixed), "--encoder", "tiny", "--no-progress"]) == 2


def test_clip_encoder_from_a_local_folder(mixed, clip_dir):
    assert main(["extract-visual", str(mixed), "--encoder", str(clip_dir), "--batch-size", "16",
                 "--no-progress"]) == 1  # the bad items of `mixed` still fail
    store = VisualFeatureStore.open(mixed)
    assert store.slug == "clip-tiny" and store.dim == 24
    assert store.meta["encoder"] == str(clip_dir) and "weights_sha1" in store.meta
    assert store.load("u0").shape == (30, 24) and store.load("u1").shape == (42, 24)
