"""Media probing and streamed audio decoding for inference.

Streams are chosen by TYPE (the first audio / the first video stream), never by position, so an
mp4 whose audio is stream 0 and a mkv whose audio is stream 2 behave the same. Audio is decoded
in chunks (PyAV) -> mixed to mono by averaging channels -> resampled with a streaming soxr
resampler, so a one-hour recording never sits in memory as a whole: callers get chunks or a
bounded span.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import av
import numpy as np
import soxr

from foalnet.data.audio import iter_mono_chunks
from foalnet.data.files import FileProblem
from foalnet.errors import UsageError


class MediaError(FileProblem, RuntimeError):
    """A media file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds, as far as inference cares."""

    path: str
    has_audio: bool
    has_video: bool
    duration: float | None  # seconds, from the container/stream headers (None: unknown)
    audio_rate: int | None  # native sample rate of the first audio stream
    audio_channels: int | None
    audio_codec: str | None
    video_codec: str | None
    fps: float | None  # average frame rate of the first video stream
    width: int | None
    height: int | None

    @property
    def modalities(self) -> list[str]:
        """Stream types present, in the fixed order audio, video."""
        return [m for m, ok in (("audio", self.has_audio), ("video", self.has_video)) if ok]


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a container or raise MediaError with a readable reason."""
    path = str(path)
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    if os.path.isdir(path):
        raise MediaError(path, "is a folder, not a media file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        return av.open(path, mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise MediaError(path, f"not a readable media container ({err})") from err


def _stream_duration(stream: av.stream.Stream) -> float | None:
    """Duration of one stream in seconds from its header, if recorded."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read the headers of a container: which streams exist, rates, duration.

    Raises MediaError for a missing, empty or unreadable file, or one with neither an audio nor
    a video stream.
    """
    with _open(path) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        if audio is None and video is None:
            raise MediaError(path, "no audio and no video stream")
        durations = [d for d in (_stream_duration(s) for s in (audio, video) if s) if d]
        if container.duration is not None:
            durations.append(container.duration / av.time_base)
        fps = None
        if video is not None and video.average_rate:
            fps = float(video.average_rate)
        return MediaInfo(
            path=str(path),
            has_audio=audio is not None,
            has_video=video is not None,
            duration=max(durations) if durations else None,
            audio_rate=audio.codec_context.sample_rate if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
            audio_codec=audio.codec_context.name if audio else None,
            video_codec=video.codec_context.name if video else None,
            fps=fps,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
        )


def _decoded_chunks(path: str, start: float) -> Iterator[tuple[np.ndarray, int]]:
    """Mono float32 chunks at the native rate, starting at `start` seconds (sample exact)."""
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        if not rate:
            raise MediaError(path, "audio stream has no sample rate")
        try:
            for samples in iter_mono_chunks(container, stream, start):
                yield samples, rate
        except av.FFmpegError as err:
            raise MediaError(path, f"audio decoding failed ({err})") from err


def iter_audio(
    path: str | os.PathLike,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[np.ndarray]:
    """Stream mono float32 chunks at `sample_rate` covering [start, end) seconds.

    Memory is bounded by one decoded chunk (plus soxr's filter state), whatever the file length.
    Raises MediaError when the file has no audio stream or cannot be decoded.
    """
    path = str(path)
    start = float(start or 0.0)
    wanted = None if end is None else max(0, round((end - start) * sample_rate))
    produced = 0
    resampler: soxr.ResampleStream | None = None
    for chunk, rate in _decoded_chunks(path, start):
        if rate != sample_rate and resampler is None:
            resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32")
        out = chunk if resampler is None else resampler.resample_chunk(chunk)
        if wanted is not None:
            out = out[: wanted - produced]
        produced += len(out)
        if len(out):
            yield out
        if wanted is not None and produced >= wanted:
            return
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if wanted is not None:
            tail = tail[: wanted - produced]
        if len(tail):
            yield tail


def read_audio(
    path: str | os.PathLike,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """The mono float32 waveform of [start, end) at `sample_rate` (a bounded span)."""
    chunks = list(iter_audio(path, sample_rate, start, end))
    if not chunks:
        raise MediaError(path, "no audio samples decoded in the requested span")
    return np.concatenate(chunks)


def window_starts(duration: float, window: float, hop: float) -> list[float]:
    """Window start times covering [0, duration): the last window may run past the end.

    n = 1 + ceil((duration - window) / hop) windows, so no window lies wholly inside the
    previous one's tail; a recording shorter than one window gives one window.
    """
    if window <= 0 or hop <= 0:
        raise UsageError(f"window and hop must be > 0 seconds, got window={window} hop={hop}")
    n = 1 + max(0, math.ceil((duration - window) / hop - 1e-9))
    return [round(i * hop, 6) for i in range(n)]


def iter_audio_spans(
    path: str | os.PathLike,
    sample_rate: int,
    spans: Sequence[tuple[float, float]],
    keep_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """One streaming pass over a file's audio: the samples of each (start, end) span, in order.

    Spans must be sorted by start and may overlap (sliding windows). `keep_seconds` keeps only
    the first seconds of each span (the model's crop). The buffer holds at most one kept span
    plus one decoded chunk, so memory does not grow with the file. A span running past the end
    of the audio gets what there is (possibly nothing).
    """
    bounds = []
    for start, end in spans:
        first = round(start * sample_rate)
        length = round((end - start) * sample_rate)
        if keep_seconds is not None:
            length = min(length, round(keep_seconds * sample_rate))
        bounds.append((first, first + max(0, length)))
    if any(b[0] < a[0] for a, b in zip(bounds, bounds[1:])):
        raise ValueError("spans must be sorted by start")
    buffer = np.zeros(0, np.float32)
    offset = 0  # absolute sample index of buffer[0]
    i = 0
    for chunk in iter_audio(path, sample_rate):
        buffer = np.concatenate([buffer, chunk])
        while i < len(bounds) and offset + len(buffer) >= bounds[i][1]:
            yield buffer[bounds[i][0] - offset : bounds[i][1] - offset].copy()
            i += 1
        if i == len(bounds):
            return
        drop = min(max(0, bounds[i][0] - offset), len(buffer))  # what no later span needs
        buffer, offset = buffer[drop:], offset + drop
    for first, stop in bounds[i:]:  # spans reaching past the end of the audio
        yield buffer[max(0, first - offset) : max(0, stop - offset)].copy()


def audio_length(path: str | os.PathLike, sample_rate: int) -> float:
    """Seconds of audio, by decoding (for containers whose headers give no duration)."""
    return sum(len(chunk) for chunk in iter_audio(path, sample_rate)) / sample_rate
