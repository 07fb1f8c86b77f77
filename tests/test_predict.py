"""Inference on new recordings: media probing/decoding, Predictor, and `foalnet predict`.

Clips are written here with PyAV (several video and audio codecs, rates, stereo); models are
tiny random-init FoalNets saved to a temp folder and loaded back through the real loading code.
"""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from foalnet.cli import main
from foalnet.infer import media
from foalnet.infer.media import MediaError
from foalnet.infer.predictor import Predictor, PredictorError
from foalnet.model.foalnet import FoalNet, FoalNetConfig

LABELS = ["neu", "hap", "sad", "ang"]


# --------------------------------------------------------------------------------- clip making
def _encodable(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frame(i: int, size: tuple[int, int]) -> np.ndarray:
    """A moving bar (so frames differ) on a face-free background; (H, W, 3) uint8."""
    W, H = size
    img = np.full((H, W, 3), 40, np.uint8)
    x = (i * 5) % W
    img[:, x : x + 8] = (220, 180, 60)
    img[H // 3 : H // 2, W // 4 : W // 2] = (i * 9) % 255
    return img


def make_clip(
    path: Path,
    seconds: float = 2.0,
    vcodec: str | None = "mpeg4",
    acodec: str | None = "aac",
    rate: int = 44100,
    channels: int = 2,
    fps: int = 25,
    size: tuple[int, int] = (128, 96),
    audio_first: bool = False,
    right_gain: float = 0.5,
    freq: float = 440.0,
) -> Path:
    """Write a clip: a moving-bar video and/or a tone (right channel scaled by right_gain)."""
    out = av.open(str(path), "w")
    streams = []
    if acodec and audio_first:
        streams.append("a")
    if vcodec:
        streams.append("v")
    if acodec and not audio_first:
        streams.append("a")
    vs = as_ = None
    for kind in streams:
        if kind == "v":
            vs = out.add_stream(vcodec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        else:
            as_ = out.add_stream(acodec, rate=rate)
            as_.layout = "stereo" if channels == 2 else "mono"
    if vs is not None:
        for i in range(int(round(seconds * fps))):
            for packet in vs.encode(av.VideoFrame.from_ndarray(_frame(i, size), format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    if as_ is not None:
        x = _tone(seconds, rate, freq)
        data = np.stack([x, right_gain * x]) if channels == 2 else x[None]
        step = as_.codec_context.frame_size or 1024
        convert = av.AudioResampler(format=as_.codec_context.format.name, layout=as_.layout.name, rate=rate)
        for s in range(0, data.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, s : s + step]),
                                               format="fltp", layout=as_.layout.name)
            frame.sample_rate, frame.pts = rate, s
            for f in convert.resample(frame):
                for packet in as_.encode(f):
                    out.mux(packet)
        for packet in as_.encode():
            out.mux(packet)
    out.close()
    return path


# (file name, video codec, audio codec, audio rate): every combination PyAV here can write.
FORMATS = [
    ("h264_aac_44k.mp4", "libx264", "aac", 44100),
    ("mpeg4_mp3_44k.avi", "mpeg4", "libmp3lame", 44100),
    ("vp9_opus_48k.webm", "libvpx-vp9", "libopus", 48000),
    ("mpeg4_pcm_16k.mov", "mpeg4", "pcm_s16le", 16000),
    ("mpeg4_flac_48k.mkv", "mpeg4", "flac", 48000),
]
FORMATS = [f for f in FORMATS if _encodable(f[1]) and _encodable(f[2])]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    out = {name: make_clip(root / name, vcodec=v, acodec=a, rate=r) for name, v, a, r in FORMATS}
    out["audio_first.mkv"] = make_clip(root / "audio_first.mkv", acodec="pcm_s16le", rate=48000,
                                       audio_first=True)
    out["video_only.mp4"] = make_clip(root / "video_only.mp4", acodec=None)
    out["audio_only.wav"] = make_clip(root / "audio_only.wav", vcodec=None, acodec="pcm_s16le", rate=48000)
    out["long.mp4"] = make_clip(root / "long.mp4", seconds=3.0, vcodec="mpeg4", acodec="pcm_s16le",
                                rate=16000, channels=1)
    out["empty.mp4"] = root / "empty.mp4"
    out["empty.mp4"].write_bytes(b"")
    out["corrupt.mp4"] = root / "corrupt.mp4"
    out["corrupt.mp4"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return out


def _save(root: Path, name: str, **overrides) -> Path:
    torch.manual_seed(0)
    overrides.setdefault("visual_settings", {"crop": "full"})
    config = FoalNetConfig.tiny(labels=LABELS, max_audio_seconds=1.5, max_video_frames=30,
                                **overrides)
    return FoalNet(config).eval().save_pretrained(root / name)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "av": _save(root, "av"),
        "audio": _save(root, "audio", modality="audio", use_avel=False, use_mem=False),
        "video": _save(root, "video", modality="video", use_avel=False, use_mem=False),
    }


@pytest.fixture(scope="module")
def av_predictor(models) -> Predictor:
    return Predictor.from_pretrained(models["av"], batch_size=3)


# --------------------------------------------------------------------------------- media
def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("name", [f[0] for f in FORMATS] + ["audio_first.mkv", "audio_only.wav"])
def test_audio_decoded_mono_resampled(clips, name):
    """Any codec/rate -> 16 kHz mono; a 440 Hz tone stays at 440 Hz, length ~2 s."""
    x = media.read_audio(clips[name], 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / 16000 - 2.0) < 0.1
    assert abs(_peak_hz(x[1600:-1600], 16000) - 440.0) < 5.0


@pytest.mark.parametrize("name", [f[0] for f in FORMATS] + ["audio_only.wav"])
def test_streamed_audio_equals_training_reader(clips, name):
    """Chunked decoding + streaming resampling gives exactly what training's load_audio reads."""
    from foalnet.data.audio import load_audio

    np.testing.assert_array_equal(media.read_audio(clips[name], 16000), load_audio(clips[name], 16000))


def test_stereo_mixed_by_channel_mean(clips):
    """Left 0.3 sin, right 0.15 sin (lossless PCM) -> mono amplitude 0.225 = mean."""
    x = media.read_audio(clips["mpeg4_pcm_16k.mov"], 16000)
    assert np.abs(x).max() == pytest.approx(0.225, abs=2e-3)


def test_streams_chosen_by_type(clips):
    info = media.probe(clips["audio_first.mkv"])
    with av.open(str(clips["audio_first.mkv"])) as c:
        assert c.streams[0].type == "audio"  # the audio stream really comes first
    assert info.modalities == ["audio", "video"] and info.fps == pytest.approx(25.0)
    assert media.probe(clips["video_only.mp4"]).modalities == ["video"]
    assert media.probe(clips["audio_only.wav"]).modalities == ["audio"]


@pytest.mark.parametrize("name, reason", [("empty.mp4", "empty file"), ("corrupt.mp4", "not a readable")])
def test_bad_files_named_errors(clips, name, reason):
    with pytest.raises(MediaError, match=reason) as err:
        media.probe(clips[name])
    assert str(clips[name]) in str(err.value)


def test_span_is_sample_exact(clips):
    whole = media.read_audio(clips["audio_only.wav"], 16000)
    part = media.read_audio(clips["audio_only.wav"], 16000, start=1.25, end=1.5)
    assert len(part) == 4000
    # the same samples, apart from the resampler's edge at the cut
    np.testing.assert_allclose(part[8:-8], whole[20008:23992], atol=1e-3)


@pytest.mark.parametrize("duration, window, hop, starts", [
    (10.0, 4.0, 2.0, [0, 2, 4, 6]), (11.0, 4.0, 2.0, [0, 2, 4, 6, 8]), (3.0, 4.0, 2.0, [0]),
    (4.0, 4.0, 4.0, [0]), (4.5, 1.0, 2.0, [0, 2, 4]),
])
def test_window_starts(duration, window, hop, starts):
    assert media.window_starts(duration, window, hop) == starts


def test_audio_spans_stream_equals_slices(clips):
    """One streaming pass gives each overlapping span's kept samples, tail included."""
    path, rate = clips["long.mp4"], 16000  # 3 s, 16 kHz PCM: no resampling
    whole = media.read_audio(path, rate)
    duration = len(whole) / rate
    spans = [(s, min(s + 1.0, duration)) for s in media.window_starts(duration, 1.0, 0.75)]
    assert [s for s, _ in spans] == [0.0, 0.75, 1.5, 2.25]
    parts = list(media.iter_audio_spans(path, rate, spans, keep_seconds=0.5))
    assert len(parts) == 4
    for (start, _), x in zip(spans, parts):
        i = round(start * rate)
        np.testing.assert_array_equal(x, whole[i : i + 8000])
    beyond = list(media.iter_audio_spans(path, rate, [(2.5, 3.5), (3.2, 4.0)]))
    assert [len(x) for x in beyond] == [len(whole) - 40000, 0]  # past the end: what there is


def test_audio_spans_bounded_memory(tmp_path):
    """120 s of audio (7.7 MB as float32) streamed in 1 s windows keeps < 2 MB of arrays alive."""
    import soundfile

    path = tmp_path / "long.wav"
    soundfile.write(path, _tone(120.0, 16000), 16000, subtype="PCM_16")
    spans = [(float(s), float(s + 1)) for s in range(120)]
    tracemalloc.start()
    count = sum(1 for _ in media.iter_audio_spans(path, 16000, spans))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 120
    assert peak < 2_000_000, peak


# --------------------------------------------------------------------------------- Predictor
def _check(result: dict, modalities: list[str]) -> None:
    assert "error" not in result, result.get("error")
    assert set(result["probabilities"]) == set(LABELS)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert result["modalities"] == modalities


def test_predict_every_format_batched_equals_single(av_predictor, clips):
    names = [f[0] for f in FORMATS] + ["audio_first.mkv"]
    batched = av_predictor.predict([clips[n] for n in names])  # batch_size 3: spans batches
    assert [r["input"] for r in batched] == [str(clips[n]) for n in names]
    for name, result in zip(names, batched):
        _check(result, ["audio", "video"])
        assert result["duration"] == pytest.approx(2.0, abs=0.1)
        alone = av_predictor.predict(clips[name])
        for label in LABELS:  # padding in a batch does not change a file's answer
            assert alone["probabilities"][label] == pytest.approx(result["probabilities"][label], abs=1e-5)


def test_same_clip_twice_same_answer(av_predictor, clips):
    first, second = av_predictor.predict([clips["h264_aac_44k.mp4"]] * 2)
    assert first == second
    assert av_predictor.predict(clips["h264_aac_44k.mp4"]) == av_predictor.predict(clips["h264_aac_44k.mp4"])


def test_single_modality_files(models, av_predictor, clips):
    """An A+V model fails a one-stream file clearly; a one-modality model uses what it needs."""
    no_audio, no_video = av_predictor.predict([clips["video_only.mp4"], clips["audio_only.wav"]])
    assert "no audio stream" in no_audio["error"] and "needs audio + video" in no_audio["error"]
    assert "no video stream" in no_video["error"]
    audio_model = Predictor.from_pretrained(models["audio"])
    _check(audio_model.predict(clips["audio_only.wav"]), ["audio"])
    _check(audio_model.predict(clips["h264_aac_44k.mp4"]), ["audio"])
    assert "no audio stream" in audio_model.predict(clips["video_only.mp4"])["error"]
    video_model = Predictor.from_pretrained(models["video"])
    _check(video_model.predict(clips["video_only.mp4"]), ["video"])
    assert "no video stream" in video_model.predict(clips["audio_only.wav"])["error"]


def test_bad_inputs_do_not_stop_the_batch(av_predictor, clips, tmp_path):
    names = ["h264_aac_44k.mp4", "empty.mp4", "corrupt.mp4", "mpeg4_pcm_16k.mov"]
    results = av_predictor.predict([clips[n] for n in names] + [tmp_path / "missing.mp4"])
    assert [sorted(r) for r in results[1:3]] == [["error", "input"]] * 2
    assert "empty file" in results[1]["error"] and "not a readable" in results[2]["error"]
    assert "file not found" in results[4]["error"]
    _check(results[0], ["audio", "video"])
    _check(results[3], ["audio", "video"])


def test_paired_audio_and_video(av_predictor, clips):
    paired = av_predictor.predict(audio=clips["audio_only.wav"], video=clips["video_only.mp4"])
    _check(paired, ["audio", "video"])
    assert paired["input"] == str(clips["video_only.mp4"]) and paired["audio"] == str(clips["audio_only.wav"])


def test_window_timeline(av_predictor, clips):
    result = av_predictor.predict(clips["long.mp4"], window=1.0, hop=0.5)
    _check(result, ["audio", "video"])
    timeline = result["timeline"]
    assert [w["start"] for w in timeline] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert timeline[-1]["end"] == pytest.approx(3.0, abs=0.01)
    for label in LABELS:  # the file-level answer is the mean over windows
        mean = np.mean([w["probabilities"][label] for w in timeline])
        assert result["probabilities"][label] == pytest.approx(mean, abs=1e-12)
    for w in timeline:
        assert sum(w["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)


def test_frames_read_in_bounded_spans(av_predictor, clips, monkeypatch):
    """Only the frames the model keeps are decoded: never the rest of a long recording."""
    import foalnet.features.extract as extract

    calls = []
    real = extract.embed_video

    def spy(path, encoder, crop, start=None, end=None, **kwargs):
        calls.append((start, end))
        return real(path, encoder, crop, start=start, end=end, **kwargs)

    monkeypatch.setattr(extract, "embed_video", spy)
    av_predictor.predict(clips["long.mp4"])  # 3 s clip, model keeps 30 frames at 25 fps
    assert calls == [(0.0, pytest.approx((30 + 2) / 25))]


# --------------------------------------------------------------------------------- model folders
def test_refuses_missing_visual_encoder(tmp_path):
    folder = _save(tmp_path, "m", visual_encoder=str(tmp_path / "no-such-clip"))
    with pytest.raises(PredictorError, match="visual encoder .*no-such-clip.* cannot be loaded"):
        Predictor.from_pretrained(folder)


def test_refuses_other_feature_dim(tmp_path):
    folder = _save(tmp_path, "m", video_dim=64)  # the tiny encoder gives 128-d features
    with pytest.raises(PredictorError, match="128-d features but the model was trained on 64-d"):
        Predictor.from_pretrained(folder)


def test_refuses_non_model_folder(tmp_path):
    with pytest.raises(PredictorError, match="not a foalnet model folder"):
        Predictor.from_pretrained(tmp_path)


def test_a_cv_folder_is_refused_with_a_fold_model_suggested(models, tmp_path):
    import shutil

    shutil.copytree(models["audio"], tmp_path / "cv" / "fold2" / "best")
    with pytest.raises(PredictorError, match=r"cross-validation folder: pick one fold's model, e\.g\. .*cv/fold2/best"):
        Predictor.from_pretrained(tmp_path / "cv")


def test_cli_names_a_failed_file_once_and_writes_no_empty_reject_list(models, clips, tmp_path, caplog):
    out = tmp_path / "out" / "pred.jsonl"
    assert main(["predict", str(models["audio"]), str(clips["empty.mp4"]), "--out", str(out)]) == 1
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FAILED")]
    assert len(failed) == 1 and failed[0].count(str(clips["empty.mp4"])) == 1, failed
    assert main(["predict", str(models["audio"]), str(clips["audio_only.wav"]), "--out", str(out)]) == 0
    assert not (tmp_path / "out" / "pred.rejected.jsonl").exists()


def test_run_folder_uses_best(models, tmp_path, clips):
    import shutil

    shutil.copytree(models["audio"], tmp_path / "run" / "best")
    p = Predictor.from_pretrained(tmp_path / "run")
    assert p.model_dir == str(tmp_path / "run" / "best")


# --------------------------------------------------------------------------------- CLI
def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_list_with_one_bad_entry(models, clips, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{clips['h264_aac_44k.mp4']}\n# a comment\n{clips['corrupt.mp4']}\n"
                       f"{clips['mpeg4_pcm_16k.mov']}\n")
    out = tmp_path / "out" / "pred.jsonl"
    assert main(["predict", str(models["av"]), str(listing), "--out", str(out)]) == 1
    lines = _lines(out)
    assert [("error" in r) for r in lines] == [False, True, False]
    rejected = _lines(tmp_path / "out" / "pred.rejected.jsonl")
    assert [r["path"] for r in rejected] == [str(clips["corrupt.mp4"])]


def test_cli_folder_window_ok(models, clips, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    for name in ("long.mp4", "audio_only.wav"):
        (folder / name).write_bytes(clips[name].read_bytes())
    out = tmp_path / "pred.jsonl"
    code = main(["predict", str(models["audio"]), str(folder), "--out", str(out),
                 "--window", "1.5", "--hop", "1.5"])
    assert code == 0
    lines = _lines(out)
    assert [Path(r["input"]).name for r in lines] == ["audio_only.wav", "long.mp4"]
    assert [len(r["timeline"]) for r in lines] == [2, 2]


@pytest.mark.parametrize("argv", [
    ["--hop", "1"],  # hop without window
    ["--window", "0"],
    ["--audio", "a.wav", "x.mp4"],  # both kinds of input
    ["--crop", "top"],
])
def test_cli_usage_errors(models, argv):
    with pytest.raises(SystemExit) as exit_:  # argparse choices
        code = main(["predict", str(models["av"]), *argv])
        raise SystemExit(code)
    assert exit_.value.code == 2


def test_cli_bad_model_folder(tmp_path, clips):
    assert main(["predict", str(tmp_path), str(clips["audio_only.wav"])]) == 2


def test_window_frames_equal_per_window_embedding(av_predictor, clips):
    """The one-pass window features equal embedding each window on its own (training's way)."""
    from foalnet.features.extract import embed_video

    path = str(clips["long.mp4"])
    info = media.probe(path)
    spans = [(s, min(s + 1.0, 3.0)) for s in media.window_starts(3.0, 1.0, 0.5)]
    one_pass = list(av_predictor._window_frames(path, info, "full", spans))
    assert len(one_pass) == len(spans)
    for (start, end), feats in zip(spans, one_pass):
        alone = embed_video(path, av_predictor.visual_encoder, "full", start=start,
                            end=None if end >= 3.0 else end).astype(np.float32)
        assert feats.shape[1] == 128 and 25 <= len(feats) <= 26  # 1 s at 25 fps (+ an edge frame)
        # up to one float16 step (other frame batches: CPU kernels may round by batch size)
        np.testing.assert_allclose(feats, alone[:30], rtol=2**-10, atol=2**-14)


def test_video_model_windows(models, clips):
    result = Predictor.from_pretrained(models["video"]).predict(clips["video_only.mp4"], window=0.8)
    _check(result, ["video"])
    assert [w["start"] for w in result["timeline"]] == [0.0, 0.8, 1.6]
    assert result["timeline"][-1]["end"] == pytest.approx(2.0)


# --------------------------------------------------------------------------------- vs training
def _cut_clip(record: dict, out: Path) -> Path:
    """One utterance as a standalone file: its frames (lossless FFV1) + its audio (16-bit PCM)."""
    from fractions import Fraction

    from foalnet.data.audio import load_audio
    from foalnet.data.video import probe_video, read_frames

    fps = Fraction(probe_video(record["video"]).fps).limit_denominator(1001)
    frames = read_frames(record["video"], record["start"], record["end"])  # (T, H, W, 3)
    wav = load_audio(record["wav"], 16000, record["audio_start"], record["audio_end"])
    with av.open(str(out), "w") as container:
        vs = container.add_stream("ffv1", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        aus = container.add_stream("pcm_s16le", rate=16000)
        aus.layout = "mono"
        for image in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        frame = av.AudioFrame.from_ndarray(wav[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*aus.encode(frame), *aus.encode()]:
            container.mux(packet)
    return out


def test_predict_agrees_with_training_run(trained_run, visual_dir, tmp_path, caplog):
    """`foalnet train` on the synthetic corpus (conftest's trained_run), then clips cut from its
    test utterances: predict (run folder -> best/) gives the probabilities of its predictions.csv."""
    import csv

    from foalnet.data.manifest import read_manifest

    run = trained_run
    records = {r["id"]: r for r in read_manifest(visual_dir)}
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    by_side = {records[row["id"]]["side"]: row for row in rows}  # one utterance per half
    predictor = Predictor.from_pretrained(run)
    assert predictor.model_dir == str(run / "best")
    for side, row in sorted(by_side.items()):
        clip = _cut_clip(records[row["id"]], tmp_path / f"{row['id']}.mkv")
        expected = [float(row[f"p_{c}"]) for c in predictor.labels]  # 6 decimals in the csv
        got = predictor.predict(clip, crop=side)
        _check(got, ["audio", "video"])
        np.testing.assert_allclose([got["probabilities"][c] for c in predictor.labels], expected, atol=2e-6)
        other = predictor.predict(clip, crop="left" if side == "right" else "right")["probabilities"]
        assert max(abs(other[c] - p) for c, p in zip(predictor.labels, expected)) > 1e-5  # crop matters
    with caplog.at_level("WARNING"):
        assert predictor.predict(clip)["input"] == str(clip)  # trained on "side": full frame + warning
    assert "--crop left/right" in caplog.text


def test_list_file_relative_paths(tmp_path, monkeypatch):
    from foalnet.infer.commands import expand_inputs

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "near.mp4").write_bytes(b"x")
    (tmp_path / "cwd.mp4").write_bytes(b"x")
    listing = tmp_path / "lists" / "in.lst"
    listing.write_text("near.mp4\ncwd.mp4\n\n# skipped\nmissing.mp4\n")
    monkeypatch.chdir(tmp_path)
    assert expand_inputs([str(listing)]) == [str(tmp_path / "lists" / "near.mp4"), "cwd.mp4",
                                             str(tmp_path / "lists" / "missing.mp4")]


def test_window_frames_bounded_memory(av_predictor, tmp_path):
    """40 s of video (7.4 MB of RGB frames) served window by window keeps < 2 MB of arrays alive."""
    path = make_clip(tmp_path / "long_video.mp4", seconds=40.0, acodec=None, fps=10, size=(96, 64))
    info = media.probe(path)
    spans = [(float(s), float(s + 2)) for s in media.window_starts(40.0, 2.0, 2.0)]
    tracemalloc.start()
    shapes = [feats.shape for feats in av_predictor._window_frames(str(path), info, "full", spans)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(shapes) == 20 and all(20 <= s[0] <= 21 for s in shapes)
    assert peak < 2_000_000, peak


def test_cli_side_trained_model_warns_about_the_crop_once(tmp_path, clips, caplog):
    """A model trained on IEMOCAP's speaker halves: predict without --crop says so, once."""
    model = _save(tmp_path, "side", visual_settings={"crop": "side"})
    with caplog.at_level("WARNING"):
        assert main(["predict", str(model), str(clips["h264_aac_44k.mp4"]),
                     "--out", str(tmp_path / "p.jsonl")]) == 0
    assert caplog.text.count("was trained on crop 'side'") == 1
