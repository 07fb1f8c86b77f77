"""load_audio / audio_info: formats, rate and channel conversion, spans, and bad files."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from foalnet.data.audio import AudioError, audio_info, load_audio


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def _write_av_audio(path: Path, samples: np.ndarray, rate: int, codec: str) -> None:
    """Encode mono float samples with PyAV (e.g. AAC in .m4a)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_wav_16k_mono_round_trip_and_span(tmp_path: Path):
    x = np.round(_tone(440, 16000, 1.0) * 32767) / 32767
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.shape == (16000,)
    np.testing.assert_allclose(y, x, atol=1 / 32767)
    part = load_audio(tmp_path / "a.wav", start=0.25, end=0.5)
    assert part.shape == (4000,)
    np.testing.assert_allclose(part, x[4000:8000], atol=1 / 32767)
    info = audio_info(tmp_path / "a.wav")
    assert (info.sample_rate, info.channels, info.frames, info.duration) == (16000, 1, 16000, 1.0)


def test_stereo_44k_is_mixed_and_resampled(tmp_path: Path):
    left, right = _tone(440, 44100, 1.0), _tone(1000, 44100, 1.0)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", sample_rate=16000)
    assert y.shape == (16000,)
    spec = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    assert freqs[np.argsort(spec)[-2:]].tolist() in ([440.0, 1000.0], [1000.0, 440.0])
    # mono = mean of the channels: each tone at half its amplitude (0.25)
    assert np.abs(y[1000:-1000]).max() == pytest.approx(0.5, abs=0.02)
    assert spec[440] / spec[1000] == pytest.approx(1.0, rel=0.05)


def test_flac_and_m4a_via_pyav(tmp_path: Path):
    x = _tone(300, 22050, 1.0)
    sf.write(tmp_path / "a.flac", x, 22050)
    assert _peak_hz(load_audio(tmp_path / "a.flac")) == pytest.approx(300, abs=2)
    _write_av_audio(tmp_path / "a.m4a", _tone(500, 48000, 1.0), 48000, "aac")
    y = load_audio(tmp_path / "a.m4a")
    assert abs(len(y) - 16000) < 800  # AAC priming/padding adds a few ms
    assert _peak_hz(y) == pytest.approx(500, abs=2)
    assert audio_info(tmp_path / "a.m4a").sample_rate == 48000


def test_video_audio_track_matches_utterance_wav(prepared_dir: Path):
    """The avi's audio track at an utterance span is the utterance (mono mix = half of it)."""
    from foalnet.data.manifest import read_manifest

    rec = read_manifest(prepared_dir)[0]
    utt = load_audio(rec["wav"])
    track = load_audio(rec["video"], start=rec["start"], end=rec["end"])
    n = min(len(utt), len(track))
    assert abs(len(utt) - len(track)) <= 1
    np.testing.assert_allclose(track[:n], utt[:n] / 2, atol=2e-4)


def test_bad_files_raise_audio_error(tmp_path: Path):
    sf.write(tmp_path / "ok.wav", _tone(440, 16000, 1.0), 16000, subtype="PCM_16")
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "trunc.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 10)
    (tmp_path / "junk.mp3").write_bytes(b"\x00\x01garbage" * 50)
    cases = {"missing.wav": "missing file", "empty.wav": "empty file", "trunc.wav": "truncated",
             "junk.wav": "unreadable", "junk.mp3": "unreadable"}
    for name, reason in cases.items():
        with pytest.raises(AudioError, match=reason) as err:
            load_audio(tmp_path / name)
        assert err.value.path == str(tmp_path / name) and reason in err.value.reason
        with pytest.raises(AudioError, match=reason):
            audio_info(tmp_path / name)
    for start, end in ((0.5, 2.0), (1.5, None), (0.6, 0.4), (-1.0, 0.5)):
        with pytest.raises(AudioError, match="outside the file"):
            load_audio(tmp_path / "ok.wav", start=start, end=end)


def test_video_without_audio_track(tmp_path: Path):
    path = tmp_path / "silent.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(AudioError, match="no audio stream"):
        load_audio(path)


def test_av_spans_equal_slices_and_decode_only_the_span(tmp_path: Path):
    """A span of a long PyAV-read file (here 40 s of lossless PCM in mkv) equals the slice of the
    whole file, sample exact, with or without the seek (start > 1 s), and decoding it keeps far
    less than the whole track in memory; a span past the end names the file and the reason."""
    import tracemalloc

    x = np.round(np.random.default_rng(0).uniform(-0.5, 0.5, 40 * 16000) * 32767) / 32767
    with av.open(str(tmp_path / "long.mkv"), "w") as container:  # 1024-sample packets, as recorders do
        stream = container.add_stream("pcm_s16le", rate=16000)
        stream.layout = "mono"
        for i in range(0, len(x), 1024):
            frame = av.AudioFrame.from_ndarray(x[None, i:i + 1024].astype(np.float32), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i, Fraction(1, 16000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    whole = load_audio(tmp_path / "long.mkv")
    assert whole.shape == (640000,)
    np.testing.assert_allclose(whole, x, atol=1 / 32767)
    for start, end in ((0.5, 1.5), (30.25, 31.0), (39.5, None)):
        part = load_audio(tmp_path / "long.mkv", start=start, end=end)
        np.testing.assert_array_equal(part, whole[round(start * 16000):None if end is None else round(end * 16000)])
    tracemalloc.start()
    load_audio(tmp_path / "long.mkv", start=30.0, end=30.5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < whole.nbytes / 4, peak  # 2.56 MB for the whole track
    for start, end in ((39.0, 45.0), (50.0, 51.0), (50.0, None)):
        with pytest.raises(AudioError, match="outside the file") as err:
            load_audio(tmp_path / "long.mkv", start=start, end=end)
        assert err.value.path == str(tmp_path / "long.mkv")
