"""Reading audio the same way everywhere: mono float32 at a fixed rate.

soundfile reads what libsndfile knows (wav, flac, ogg, aiff); PyAV reads everything else (mp3,
m4a, the audio track of a video). Channels are averaged; other rates are resampled with soxr, so
a 44.1 kHz stereo file is converted when read, not rejected. Every failure is an ``AudioError``
naming the file and the reason.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import soundfile as sf
import soxr

from foalnet.data.files import FileProblem

if TYPE_CHECKING:
    import av

# Extensions that libsndfile reads directly; anything else goes through PyAV.
SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".snd", ".w64"}
# Tolerance (s) for a span ending just past the file (label rounding).
SPAN_TOLERANCE = 0.05


class AudioError(FileProblem):
    """A file that cannot be used as audio: missing, empty, truncated, unreadable, bad span."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (or of a video's audio track)."""

    sample_rate: int
    channels: int
    frames: int
    duration: float


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "missing file")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _check_riff_size(path: Path) -> None:
    """Detect a truncated wav from its chunk headers only (libsndfile silently shortens it)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not RIFF/WAVE (e.g. RF64): leave it to libsndfile
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave these
                    return
                if pos + 8 + chunk_size > size:
                    raise AudioError(path, f"truncated wav: data chunk declares {chunk_size} "
                                           f"bytes, file holds {size - pos - 8}")
                return
            pos += 8 + chunk_size + (chunk_size & 1)
        raise AudioError(path, "truncated wav: no data chunk")


def _info_av(path: Path) -> AudioInfo:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            channels = stream.codec_context.channels
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = 0.0
    except AudioError:
        raise
    except Exception as err:  # PyAV raises many error types for bad containers
        raise AudioError(path, f"unreadable: {err}") from err
    return AudioInfo(int(rate), int(channels), int(round(duration * rate)), duration)


def audio_info(path: str | Path) -> AudioInfo:
    """Open the header only (cheap: used by prepare to check every file without decoding)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() not in SOUNDFILE_EXTS:
        return _info_av(path)
    if path.suffix.lower() == ".wav":
        _check_riff_size(path)
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile.LibsndfileError / RuntimeError
        raise AudioError(path, f"unreadable: {err}") from err
    if info.frames <= 0:
        raise AudioError(path, "no audio samples")
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames),
                     info.frames / info.samplerate)


def _span_frames(path: Path, rate: int, total: int, start: float | None,
                 end: float | None) -> tuple[int, int]:
    """Sample indices of [start, end) seconds, checked against the file length."""
    duration = total / rate
    s = 0.0 if start is None else float(start)
    e = duration if end is None else float(end)
    if s < 0 or e <= s or s >= duration or e > duration + SPAN_TOLERANCE:
        raise AudioError(path, f"span [{s:.3f}, {e:.3f}] s outside the file ({duration:.3f} s)")
    return int(round(s * rate)), min(total, int(round(e * rate)))


def _read_soundfile(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    info = audio_info(path)
    first, last = _span_frames(path, info.sample_rate, info.frames, start, end)
    try:
        with sf.SoundFile(str(path)) as fh:
            fh.seek(first)
            data = fh.read(last - first, dtype="float32", always_2d=True)  # (S, C)
    except Exception as err:
        raise AudioError(path, f"unreadable: {err}") from err
    if data.shape[0] < last - first:
        raise AudioError(path, f"truncated: read {data.shape[0]} of {last - first} samples")
    return data.mean(axis=1), info.sample_rate


def _frame_mono(frame: "av.AudioFrame", to_float: "av.AudioResampler") -> np.ndarray:
    """One decoded frame -> float32 mono samples (channel average)."""
    out = []
    for f in to_float.resample(frame):
        planes = f.to_ndarray()  # (C, N) float32, planar
        out.append(planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _frame_start(frame: "av.AudioFrame", rate: int) -> int:
    """Sample index of a frame's first sample (0 when the container gives no timestamp)."""
    if frame.pts is None or frame.time_base is None:
        return 0
    return max(0, round(float(frame.pts * frame.time_base) * rate))


def iter_mono_chunks(container: "av.container.InputContainer", stream: "av.audio.AudioStream",
                     start: float = 0.0) -> Iterator[np.ndarray]:
    """Decode an audio stream of an open container from ``start`` s: mono float32 chunks at the
    native rate, sample exact. The one PyAV audio decoder: training's reader (whole file) and
    inference's streaming reader (seeks near ``start``) both use it. PyAV errors propagate."""
    import av

    rate = stream.codec_context.sample_rate
    if start > 1.0:  # seek near the span (keyframe before it), then trim exactly below
        container.seek(int(max(0.0, start - 0.5) / stream.time_base), stream=stream)
    to_float = av.AudioResampler(format="fltp")  # planar float, native layout and rate
    first_sample = round(start * rate)
    position: int | None = None  # index of the next sample, in native samples
    for packet in container.demux(stream):
        for frame in packet.decode():
            if position is None:
                position = _frame_start(frame, rate)
            samples = _frame_mono(frame, to_float)
            skip = max(0, first_sample - position)
            position += len(samples)
            if skip < len(samples):
                yield samples[skip:]


def _read_av(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """Decode only [start, end) (seeking near start): a span of a long video costs its own length,
    not the file's, in time and memory."""
    import av

    _check_exists(path)
    s = 0.0 if start is None else float(start)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate)
            want = None if end is None else max(0, round((float(end) - s) * rate))
            if s < 0 or (want is not None and want == 0):
                raise AudioError(path, f"span [{s:.3f}, {float(end):.3f}] s outside the file")
            chunks, got = [], 0
            for chunk in iter_mono_chunks(container, stream, s):
                chunks.append(chunk)
                got += len(chunk)
                if want is not None and got >= want:
                    break
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(path, f"unreadable: {err}") from err
    if not got and start is None:
        raise AudioError(path, "no audio samples")
    short = want is not None and got < want - round(SPAN_TOLERANCE * rate)
    if not got or short:
        e = s + got / rate if end is None else float(end)
        where = f"audio ends at {s + got / rate:.3f} s" if got else f"no audio after {s:.3f} s"
        raise AudioError(path, f"span [{s:.3f}, {e:.3f}] s outside the file ({where})")
    mono = np.concatenate(chunks).astype(np.float32, copy=False)
    return (mono if want is None else mono[:want]), rate


def load_audio(path: str | Path, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None) -> np.ndarray:
    """Mono float32 samples [S] of ``path`` (optionally the span [start, end) s) at ``sample_rate``."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTS:
        mono, rate = _read_soundfile(path, start, end)
    else:
        mono, rate = _read_av(path, start, end)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_record_audio(record: dict, sample_rate: int, max_seconds: float) -> np.ndarray:
    """The first ``max_seconds`` of a manifest record's audio (its span, if any), float32 [S].

    The one definition of "the model's audio input" (spec §1.1: first 6 s), shared by training
    and the audio front-end cache so the two can never disagree. A record with ``speed`` (a
    speed-perturbed training copy, ``data.speed_perturb``) is resampled by that factor first."""
    wav = load_audio(record["wav"], sample_rate=sample_rate,
                     start=record.get("audio_start"), end=record.get("audio_end"))
    if record.get("speed") is not None:
        wav = change_speed(wav, sample_rate, float(record["speed"]))
    return np.ascontiguousarray(wav[: int(round(max_seconds * sample_rate))], dtype=np.float32)


def change_speed(wav: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """``wav`` played ``factor`` times faster: duration / factor, every frequency x factor (sox's
    ``speed``; Kaldi's speed perturbation): resampled to sample_rate / factor, kept at sample_rate."""
    return soxr.resample(np.asarray(wav, dtype=np.float32), sample_rate, sample_rate / factor, quality="HQ")
