"""Reading video frames with PyAV: one or many time spans of a file, decoded once.

IEMOCAP stores one video per dialog and tens of utterance spans inside it, some overlapping
(the two actors talk over each other). `walk_spans` decodes the file once, front to back,
seeking forward over long gaps, and reports each frame together with the spans it belongs to,
then closes each span as soon as the stream has passed its end. Consumers that need frames
(tests, inference) use `read_spans` / `read_frames`; the feature extractor consumes the walk
directly so that it holds embeddings, never a whole utterance of raw frames.

Frame rule: a frame shown over [t, t + 1/fps) belongs to the span [start, end) when the two
intervals overlap, so every span inside the video gets at least one frame. With an fps policy
the stream is first resampled to a grid k / fps (each grid time takes the frame on screen then).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from foalnet.data.files import FileProblem
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

# Seek instead of decoding when the next span starts this many seconds after the decoder.
SEEK_GAP = 4.0
# A span may end this far after the last frame (rounding in label files) and is then truncated.
END_TOLERANCE = 1.0
# Seek this far before a span so that no frame of the span comes from before the jump.
SEEK_MARGIN = 1.0
CROPS = ("left", "right", "full", "face")


class VideoError(FileProblem):
    """A video cannot be used: missing, empty, unreadable, or a span outside it."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream (fps read from the file)."""

    path: str
    width: int
    height: int
    fps: float
    duration: float | None  # seconds, None when the container does not say
    frames: int | None  # frame count, None when the container does not say


@dataclass
class SpanFrame:
    """One decoded frame and the requested spans it belongs to."""

    index: int  # frame number in the (resampled) stream, unique per file
    time: float  # seconds
    image: np.ndarray  # (H, W, 3) uint8 RGB
    spans: list[int]  # indices into the requested span list


@dataclass
class SpanClosed:
    """A span is complete: every frame it owns was reported before this event."""

    span: int
    frames: int
    error: str | None = None  # reason when the span cannot be served


@dataclass
class _SpanState:
    start: float
    end: float
    frames: int = 0
    closed: bool = False


@dataclass
class _Walk:
    """Book-keeping of one pass over a file: which spans are waiting, open, finished."""

    spans: list[_SpanState]
    order: list[int] = field(default_factory=list)  # not yet opened, by start time
    active: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.spans)), key=lambda i: (self.spans[i].start, i))


def _open(path: str | os.PathLike):
    """Open a container and its first video stream, or raise VideoError with the reason."""
    import av

    path = str(path)
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file")
    try:
        container = av.open(path)
    except Exception as err:  # PyAV raises several error types for unreadable files
        raise VideoError(path, f"cannot open: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    return fps if fps > 0 else 30.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, fps and length of a video, without decoding it."""
    container, stream = _open(path)
    try:
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        return VideoInfo(
            path=str(path),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=_stream_fps(stream),
            duration=duration,
            frames=stream.frames or None,
        )
    finally:
        container.close()


def decodable_video(path: str | os.PathLike) -> VideoInfo:
    """probe_video, plus a decoded first frame: prepare rejects a clip whose header opens but
    whose stream yields nothing (truncated or empty files) before it reaches extraction."""
    info = probe_video(path)
    container, stream = _open(path)
    try:
        for _ in container.decode(stream):
            return info
    except Exception as err:  # PyAV's decode errors vary by version
        raise VideoError(path, f"no decodable frames: {err}") from err
    finally:
        container.close()
    raise VideoError(path, "no decodable frames")


# Audio and video of one item may differ by this much (s) before prepare rejects the pair.
AV_MAX_GAP = 1.0


def av_length_problem(audio_seconds: float | None, video_seconds: float | None,
                      max_gap: float = AV_MAX_GAP) -> str | None:
    """Why an audio/video pair cannot be one recording (lengths too far apart), or None.

    An unknown length (a container that does not say) is not a mismatch."""
    if audio_seconds is None or video_seconds is None:
        return None
    if abs(audio_seconds - video_seconds) > max_gap:
        return (f"audio ({audio_seconds:.2f} s) and video ({video_seconds:.2f} s) lengths differ "
                f"by more than {max_gap:g} s: not the same recording")
    return None


def media_problem(audio: str | os.PathLike, video: str | os.PathLike | None
                  ) -> tuple[str, str] | None:
    """(path, reason) of the first reason an item's media are unusable, or None: audio that
    does not open, a video without a decodable frame, or lengths more than AV_MAX_GAP apart.
    Headers and one frame only, so prepare stays cheap on thousands of clips."""
    from foalnet.data.audio import AudioError, audio_info

    try:
        audio_seconds = audio_info(audio).duration
    except AudioError as err:
        return err.path, err.reason
    if video is None:
        return None
    try:
        info = decodable_video(video)
    except VideoError as err:
        return err.path, err.reason
    problem = av_length_problem(audio_seconds, info.duration)
    return (str(video), problem) if problem else None


def _normalise_spans(spans: Sequence[tuple[float | None, float | None]]) -> list[_SpanState]:
    states = []
    for start, end in spans:
        start = 0.0 if start is None else float(start)
        end = math.inf if end is None else float(end)
        states.append(_SpanState(start, end))
    return states


class _Decoder:
    """Frames of one stream in display order, with forward seeks on request.

    The walk calls `request_seek(t)` between frames when the next span is far ahead; the
    decoder then jumps to the key frame before `t`. A seek that lands after its target (a
    broken index) switches seeking off and decodes from the start instead.
    """

    def __init__(self, container, stream):
        self.container, self.stream = container, stream
        self.period = 1.0 / _stream_fps(stream)
        self.can_seek = True
        self.seeks = 0
        self._target: float | None = None
        self._last_target = 0.0

    def request_seek(self, time: float) -> None:
        """Jump to the key frame before `time`, once per target (never back, never twice)."""
        if self.can_seek and time > self._last_target:
            self._target = self._last_target = time

    def _seek(self, time: float) -> None:
        self.container.seek(int(time / self.stream.time_base), stream=self.stream, backward=True)

    def frames(self) -> Iterator[tuple[float, object]]:
        """(time in seconds, av.VideoFrame)."""
        last_time = -self.period
        target: float | None = None
        while True:
            jumped = False
            for frame in self.container.decode(self.stream):
                time = float(frame.time) if frame.time is not None else last_time + self.period
                if target is not None:
                    overshoot = time > target + self.period
                    target = None
                    if overshoot:
                        log.debug("seek landed at %.2fs past its target; decoding from 0", time)
                        self.can_seek = False
                        self._seek(0.0)
                        jumped = True
                        break
                last_time = time
                yield time, frame
                if self._target is not None:
                    target, self._target = self._target, None
                    self.seeks += 1
                    self._seek(target)
                    jumped = True
                    break
            if not jumped:
                return


def _resampled(frames: Iterator[tuple[float, object]], fps: float | None,
               native_period: float) -> Iterator[tuple[int, float, float, object]]:
    """(index, time, period, frame): the native stream, or the grid k/fps (frame on screen)."""
    if fps is None:
        for time, frame in frames:
            yield round(time / native_period), time, native_period, frame
        return
    period = 1.0 / fps
    previous = None
    for time, frame in frames:
        if previous is not None:
            prev_time, prev_frame = previous
            k = max(0, math.ceil(prev_time * fps - 1e-9))
            while k * period < time - 1e-9:
                yield k, k * period, period, prev_frame
                k += 1
        previous = (time, frame)
    if previous is not None:  # the last frame stays on screen for one native period
        prev_time, prev_frame = previous
        k = max(0, math.ceil(prev_time * fps - 1e-9))
        while k * period < prev_time + native_period - 1e-9:
            yield k, k * period, period, prev_frame
            k += 1


def walk_spans(path: str | os.PathLike, spans: Sequence[tuple[float | None, float | None]],
               fps: float | None = None, seek_gap: float | None = None,
               ) -> Iterator[SpanFrame | SpanClosed]:
    """Decode `path` once and serve every span (start, end) in seconds (None: file edge).

    Yields a SpanFrame for each frame owned by at least one span (only those are converted to
    RGB) and exactly one SpanClosed per span, in the order the spans end. Raises VideoError
    when the file cannot be opened at all; problems of single spans come as SpanClosed.error.
    `seek_gap` (default SEEK_GAP seconds): jump instead of decoding across longer gaps.
    """
    seek_gap = SEEK_GAP if seek_gap is None else seek_gap
    if fps is not None and fps <= 0:
        raise UsageError(f"fps must be positive, got {fps}")
    states = _normalise_spans(spans)
    for i, s in enumerate(states):
        if s.end <= s.start:
            s.closed = True
            yield SpanClosed(i, 0, f"empty span [{s.start:.3f}, {s.end:.3f})")
    walk = _Walk(states)
    walk.order = [i for i in walk.order if not states[i].closed]
    if not walk.order:
        return
    container, stream = _open(path)
    try:
        yield from _walk(container, stream, walk, fps, seek_gap)
    finally:
        container.close()


def _walk(container, stream, walk: _Walk, fps: float | None, seek_gap: float,
          ) -> Iterator[SpanFrame | SpanClosed]:
    states = walk.spans
    decoder = _Decoder(container, stream)
    last_end = -math.inf  # end of the last frame seen
    frames = _resampled(decoder.frames(), fps, decoder.period)
    try:
        for index, time, period, frame in frames:
            last_end = time + period
            yield from _close_finished(walk, time)
            _open_started(walk, time, period)
            if not walk.active:
                if not walk.order:
                    break
                gap = states[walk.order[0]].start - time
                if gap > seek_gap:
                    decoder.request_seek(states[walk.order[0]].start - SEEK_MARGIN)
                continue
            for i in walk.active:
                states[i].frames += 1
            image = frame.to_ndarray(format="rgb24")
            yield SpanFrame(index, time, image, list(walk.active))
    except Exception as err:  # corrupt data mid-stream: fail what is open or still to come
        reason = f"decode error after {max(last_end, 0.0):.2f}s: {err}"
        for i in walk.active + walk.order:
            yield SpanClosed(i, states[i].frames, reason)
        return
    yield from _close_at_eof(walk, last_end)


def _open_started(walk: _Walk, time: float, period: float) -> None:
    """Move spans that overlap the frame [time, time+period) from waiting to active."""
    states = walk.spans
    while walk.order and states[walk.order[0]].start < time + period:
        walk.active.append(walk.order.pop(0))


def _close_finished(walk: _Walk, time: float) -> Iterator[SpanClosed]:
    """Close the active spans that end at or before the frame starting at `time`."""
    states = walk.spans
    still = []
    for i in walk.active:
        if states[i].end <= time:
            yield SpanClosed(i, states[i].frames)
        else:
            still.append(i)
    walk.active = still


def _close_at_eof(walk: _Walk, last_end: float) -> Iterator[SpanClosed]:
    """Close what is left after the last frame: truncated spans, or spans outside the video."""
    states = walk.spans
    for i in walk.active:
        s = states[i]
        if s.end != math.inf and s.end > last_end + END_TOLERANCE:
            yield SpanClosed(i, s.frames, f"span [{s.start:.2f}, {s.end:.2f}] ends after the "
                             f"video ({last_end:.2f}s)")
        else:
            yield SpanClosed(i, s.frames)
    for i in walk.order:
        s = states[i]
        where = "no frames" if last_end == -math.inf else f"video ends at {last_end:.2f}s"
        yield SpanClosed(i, 0, f"span [{s.start:.2f}, {s.end:.2f}] outside the video ({where})")


def read_spans(path: str | os.PathLike, spans: Sequence[tuple[float | None, float | None]],
               fps: float | None = None) -> Iterator[tuple[int, np.ndarray | VideoError]]:
    """(span index, frames (T, H, W, 3) uint8 or the VideoError) as each span completes."""
    held: dict[int, list[np.ndarray]] = {}
    for event in walk_spans(path, spans, fps=fps):
        if isinstance(event, SpanFrame):
            for i in event.spans:
                held.setdefault(i, []).append(event.image)
            continue
        frames = held.pop(event.span, [])
        if event.error:
            yield event.span, VideoError(path, event.error)
        else:
            yield event.span, np.stack(frames)


def read_frames(path: str | os.PathLike, start: float | None = None, end: float | None = None,
                fps: float | None = None) -> np.ndarray:
    """All frames of one span as (T, H, W, 3) uint8; raises VideoError."""
    for _, result in read_spans(path, [(start, end)], fps=fps):
        if isinstance(result, VideoError):
            raise result
        return result
    raise VideoError(path, "no frames")


def resolve_crop(crop: str, side: str | None) -> str:
    """The region to cut for one record: `side` follows the record's speaker half.

    crop "side" -> "left"/"right" from the record (or "full" when it has none / says full);
    "face" -> "face:<region>" (the face searched in the speaker's half); others as given.
    """
    region = side if side in ("left", "right") else "full"
    if crop == "side":
        return region
    if crop == "face":
        return f"face:{region}"
    if crop in ("left", "right", "full"):
        return crop
    raise UsageError(f"unknown crop {crop!r}; expected side, left, right, full or face")


def crop_region(image: np.ndarray, region: str) -> np.ndarray:
    """Cut the left/right half (IEMOCAP: each actor's 360 px of 720) or keep the full frame."""
    H, W, _ = image.shape
    if region == "left":
        return image[:, : W // 2]
    if region == "right":
        return image[:, W // 2:]
    if region == "full":
        return image
    raise ValueError(f"unknown region {region!r}")


class FaceCropper:
    """Face box from OpenCV's Haar cascade (optional extra `face`), else the whole region.

    Detection runs on a grey copy `detect_width` px wide, looks for faces of at least
    `min_face` of that width (480 px and 0.05: 24 px, the cascade's own window; the earlier 160
    px and a fifth missed every face under 20 % of the frame width, benchmarks/face_detection.py)
    and runs on every `every`-th frame of a region (faces move little between frames). Several faces (MELD's scenes): the largest box is taken, the speaker usually being
    the one in close-up. No face found: the last box is reused until it is `hold` frames old,
    so a miss of the detector does not jump the crop; after that, and before any face was seen,
    the whole region is used. `settings()` says so (it goes into the cache's meta.json);
    `fallbacks` counts frames served without a face box. Call `reset()` between videos so a
    box never carries over from one clip to the next.
    """

    PICK = "largest"

    def __init__(self, margin: float = 0.25, hold: int = 15, every: int = 3,
                 detect_width: int = 480, min_face: float = 0.05):
        try:
            import cv2
        except ImportError as err:
            raise ImportError("crop 'face' needs OpenCV: pip install 'foalnet[face]'") from err
        self._cv2 = cv2
        cascade = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self._detector = cv2.CascadeClassifier(cascade)
        if self._detector.empty():
            raise ImportError(f"OpenCV face cascade not found at {cascade}")
        self.margin, self.hold, self.every, self.detect_width = margin, hold, every, detect_width
        self.min_face = min_face  # smallest face searched, as a fraction of the region's width
        self.fallbacks = 0
        self._last: dict[str, tuple[tuple[int, int, int, int], int]] = {}  # key -> (box, age)
        self._calls: dict[str, int] = {}

    def settings(self) -> dict:
        return {"detector": "haar_frontalface_default", "margin": self.margin, "hold": self.hold,
                "every": self.every, "detect_width": self.detect_width,
                "min_face": self.min_face, "pick": self.PICK,
                "no_face": f"reuse the last box for up to {self.hold} frames, then the full "
                           "region"}

    def reset(self) -> None:
        """Forget held boxes and frame counts (a new video starts)."""
        self._last.clear()
        self._calls.clear()

    def _detect(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of the largest face in full-size pixels, or None."""
        cv2 = self._cv2
        H, W, _ = image.shape
        scale = max(1.0, W / self.detect_width)
        small = cv2.resize(image, (int(W / scale), int(H / scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        least = max(16, int(grey.shape[1] * self.min_face))
        found = self._detector.detectMultiScale(grey, scaleFactor=1.15, minNeighbors=4,
                                                minSize=(least, least))
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda b: b[2] * b[3])
        return tuple(int(round(v * scale)) for v in (x, y, w, h))

    def _box(self, image: np.ndarray, key: str) -> tuple[int, int, int, int] | None:
        n = self._calls[key] = self._calls.get(key, -1) + 1
        last = self._last.get(key)
        found = None if (last is not None and n % self.every) else self._detect(image)
        if found is not None:
            box, age = found, 0
        elif last is not None:
            box, age = last[0], last[1] + 1
        else:
            return None
        if age > self.hold:
            self._last.pop(key, None)
            return None
        self._last[key] = (box, age)
        return box

    def __call__(self, image: np.ndarray, key: str = "") -> np.ndarray:
        """The face (square, with margin) of `image`; the image itself when none is found."""
        box = self._box(image, key)
        if box is None:
            self.fallbacks += 1
            return image
        H, W, _ = image.shape
        x, y, w, h = box
        side = int(max(w, h) * (1 + 2 * self.margin))
        cx, cy = x + w // 2, y + h // 2
        x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
        return image[y0: min(H, y0 + side), x0: min(W, x0 + side)]
