"""Emotion prediction on new recordings with a trained model folder.

``Predictor.from_pretrained(model_dir)`` loads the bundle a training run saved (weights, labels,
audio preprocessing, the visual encoder name + settings the features were made with), checks it,
and ``predict(...)`` turns media files into ``{"input", "label", "probabilities", "duration",
"modalities"}`` dicts (``"timeline"`` too with a window; ``{"input", "error"}`` for a failed
input, never an exception that stops the batch).

Preprocessing is the training one: mono audio at the model rate, cut to the first
``max_audio_seconds``; frames sampled with the recorded fps policy and crop, embedded by the
recorded encoder, cut to the first ``max_video_frames``. Memory stays bounded on long
recordings: without a window only that first span is decoded; with a window, audio and video
are each decoded in ONE streaming pass that serves all (overlapping) windows, holding only the
open windows' samples/embeddings, and at most ``batch_size`` rows wait for the model.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from foalnet.infer.media import (MediaError, MediaInfo, audio_length, iter_audio_spans, probe, read_audio,
                                window_starts)
from foalnet.data.padding import pad_sequences  # the same padding and masks as training
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
CROPS = ("full", "left", "right", "face")
# Extra frames asked of the decoder past the model's frame limit (timestamp rounding).
FRAME_MARGIN = 2


class PredictorError(RuntimeError):
    """The model folder cannot be used for prediction (the message says why)."""


@dataclass(frozen=True)
class Source:
    """One input: the name reported, and where its audio and video come from."""

    input: str
    audio: str | None  # file whose (first) audio stream is used
    video: str | None  # file whose (first) video stream is used


@dataclass
class _Job:
    """Progress of one input through decoding and batched scoring."""

    source: Source
    modalities: list[str] = field(default_factory=list)
    duration: float | None = None
    windows: list[tuple[float, float]] = field(default_factory=list)
    scores: dict[int, np.ndarray] = field(default_factory=dict)  # window index -> probs [C]
    windowed: bool = False  # --window given: report a timeline
    complete: bool = False  # all rows queued (or the input failed)
    error: str | None = None

    def done(self) -> bool:
        return self.complete and (self.error is not None or len(self.scores) == len(self.windows))


@dataclass
class _Item:
    """One model input row: a window of one job."""

    job: _Job
    index: int
    waveform: np.ndarray | None  # float32 [S]
    video: np.ndarray | None  # float32 [T, D]


def _resolve_model_dir(model_dir: PathLike) -> Path:
    """A model folder (one model or an ensemble), or a run folder whose best/ (else last/) model is used."""
    from foalnet.model.ensemble import is_model_folder

    path = Path(model_dir)
    if not path.is_dir():
        raise PredictorError(f"{path}: model folder not found")
    if is_model_folder(path):
        return path
    for sub in ("best", "last"):
        if is_model_folder(path / sub):
            log.info("%s is a run folder: using its %s/ model", path, sub)
            return path / sub
    folds = sorted(p.parent.name for p in path.glob("fold*/best") if is_model_folder(p))
    hint = f"; a cross-validation folder: pick one fold's model, e.g. {path / folds[0]}/best" if folds else ""
    raise PredictorError(f"{path}: not a foalnet model folder (no config.json or ensemble.json, no best/ or last/){hint}")


def _needed_modalities(modality: str) -> list[str]:
    return {"av": ["audio", "video"], "audio": ["audio"], "video": ["video"]}[modality]


def _settings_mismatch(recorded: dict, actual: dict) -> list[str]:
    """Keys the encoder reports differently from what the model was trained with."""
    return [
        f"{k}: trained {recorded[k]!r}, encoder {actual[k]!r}"
        for k in sorted(set(recorded) & set(actual))
        if recorded[k] != actual[k]
    ]


class Predictor:
    """A loaded model + its preprocessing: media files in, emotion probabilities out."""

    def __init__(
        self,
        model: torch.nn.Module,
        visual_encoder=None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        model_dir: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.config = model.config
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model_dir = model_dir
        self.labels: list[str] = list(model.labels)
        self.modalities = _needed_modalities(self.config.modality)
        self.visual_encoder = visual_encoder
        if "video" in self.modalities:
            self._check_visual_encoder(visual_encoder)
        self.settings: dict = dict(getattr(self.config, "visual_settings", None) or {})

    # ----------------------------------------------------------------- loading and checks
    @classmethod
    def from_pretrained(
        cls,
        model_dir: PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        visual_encoder: str | None = None,
    ) -> "Predictor":
        """Load a model folder (or a run folder's best/ model) and the visual encoder it records.

        `visual_encoder` overrides the recorded encoder name/path (e.g. a local copy of a hub
        checkpoint on an offline machine); it must give the same feature dimension.
        Raises PredictorError with the reason when the folder cannot be used.
        """
        from foalnet.model.ensemble import load_model

        path = _resolve_model_dir(model_dir)
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise PredictorError(f"device {device!r} is not usable here ({err})") from err
        try:
            model = load_model(str(path))
        except Exception as err:  # any loading failure is a bad model folder for the user
            raise PredictorError(f"{path}: cannot load the model ({type(err).__name__}: {err})") from err
        encoder = None
        if "video" in _needed_modalities(model.config.modality):
            encoder = cls._load_visual_encoder(path, model.config, visual_encoder, device)
        return cls(model, encoder, device=device, batch_size=batch_size, model_dir=str(path))

    @staticmethod
    def _load_visual_encoder(path: Path, config, override: str | None, device):
        """Build the encoder named in config.json (or the override), with a clear refusal."""
        from foalnet.features.base import build_visual_encoder

        name = override or getattr(config, "visual_encoder", None)
        if not name:
            raise PredictorError(
                f"{path}: the model uses video but config.json records no visual_encoder; "
                "pass the encoder the features were extracted with (--visual-encoder)"
            )
        local = os.path.isabs(name) or name.startswith((".", "~"))
        if local and not os.path.isdir(os.path.expanduser(name)):
            raise PredictorError(
                f"{path}: visual encoder {name!r} recorded for this model cannot be loaded "
                "(folder not found); pass a local copy with --visual-encoder"
            )
        try:
            return build_visual_encoder(name, device=str(device))
        except Exception as err:
            raise PredictorError(
                f"{path}: visual encoder {name!r} recorded for this model cannot be loaded "
                f"({type(err).__name__}: {err}); pass a local copy with --visual-encoder"
            ) from err

    def _check_visual_encoder(self, encoder) -> None:
        """Refuse an encoder whose feature dimension or settings differ from training."""
        where = self.model_dir or "model"
        if encoder is None:
            raise PredictorError(f"{where}: the model uses video but no visual encoder was given")
        expected = int(self.config.video_dim)
        if int(encoder.dim) != expected:
            raise PredictorError(
                f"{where}: visual encoder {encoder.name!r} gives {encoder.dim}-d features but the "
                f"model was trained on {expected}-d features"
            )
        recorded = dict(getattr(self.config, "visual_settings", None) or {})
        bad = _settings_mismatch(recorded, dict(encoder.settings()))
        if bad:
            raise PredictorError(f"{where}: visual encoder settings differ from training: {'; '.join(bad)}")

    # ----------------------------------------------------------------- public API
    @property
    def default_crop(self) -> str:
        """The recorded training crop when it applies to any file, else the full frame.

        "side" (IEMOCAP: the speaker's half, known per utterance) has no meaning for a new
        file: the full frame is used and a warning suggests --crop left/right.
        """
        crop = self.settings.get("crop", "full")
        return crop if crop in CROPS else "full"

    def predict(
        self,
        path_or_paths: PathLike | Sequence[PathLike] | None = None,
        audio: PathLike | Sequence[PathLike] | None = None,
        video: PathLike | Sequence[PathLike] | None = None,
        crop: str | None = None,
        window: float | None = None,
        hop: float | None = None,
    ) -> dict | list[dict]:
        """Predict one file (-> dict) or many (-> list of dicts, batched across files).

        `audio`/`video` pair a separate audio file with a video file (one each, or two lists
        of the same length) instead of `path_or_paths`. With `window` (seconds) each input is
        cut into windows every `hop` seconds (default: `window`); the result then holds a
        `timeline` and the file-level probabilities are the mean over windows.
        A failed input gives {"input", "error"}; the others are still predicted.
        """
        sources, single = make_sources(path_or_paths, audio, video)
        results = list(self.iter_predict(sources, crop=crop, window=window, hop=hop))
        return results[0] if single else results

    def iter_predict(
        self,
        sources: Iterable[Source],
        crop: str | None = None,
        window: float | None = None,
        hop: float | None = None,
    ) -> Iterator[dict]:
        """Results in input order, each as soon as it is complete (streaming, for the CLI)."""
        crop = self.resolve_crop(crop)
        window, hop = check_window(window, hop)
        if window and "audio" in self.modalities and window > self.config.max_audio_seconds:
            log.warning("window %.1f s is longer than the %.1f s of audio the model reads: only the "
                        "start of each window is used (as in training)", window, self.config.max_audio_seconds)
        jobs: deque[_Job] = deque()
        batch: list[_Item] = []
        warned_long = False
        for source in sources:
            job = _Job(source)
            jobs.append(job)
            try:
                for item in self._items(job, crop, window, hop):
                    batch.append(item)
                    if len(batch) >= self.batch_size:
                        self._score(batch)
                        batch = []
            except ImportError:  # a broken installation is not a bad input
                raise
            except Exception as err:  # a bad input must never stop the others
                job.error = _describe(err)
                log.debug("input %s failed", source.input, exc_info=True)
            job.complete = True
            if window is None and not warned_long and self._longer_than_read(job):
                warned_long = True
                log.warning("%s lasts %.1f s: only its first %.1f s of audio / %d frames are read, as "
                            "in training; --window covers a whole recording", source.input, job.duration,
                            self.config.max_audio_seconds, self.config.max_video_frames)
            while jobs and jobs[0].done():
                yield self._result(jobs.popleft())
        if batch:
            self._score(batch)
        while jobs:
            yield self._result(jobs.popleft())

    # ----------------------------------------------------------------- preprocessing
    def _longer_than_read(self, job: _Job) -> bool:
        """Whether the model reads only the start of this (whole-file) input."""
        return job.error is None and job.duration is not None and \
            job.duration > self.config.max_audio_seconds + 0.5

    def resolve_crop(self, crop: str | None) -> str:
        """The crop to use (None: the default); ValueError for an unknown or unusable one."""
        if crop == "face" and "video" in self.modalities:
            try:
                import cv2  # noqa: F401  (the face detector of data/video.py)
            except ImportError as err:
                raise UsageError("crop 'face' needs OpenCV: pip install 'foalnet[face]'") from err
        if crop is None:
            recorded = self.settings.get("crop")
            if "video" in self.modalities and recorded not in (None, *CROPS):
                log.warning(
                    "the model was trained on crop %r (the speaker's half of each utterance); "
                    "videos of new files use the full frame unless crop='left'/'right' "
                    "(CLI: --crop left/right) says where the speaker is",
                    recorded,
                )
            return self.default_crop
        if crop not in CROPS:
            raise UsageError(f"unknown crop {crop!r}; expected one of {', '.join(CROPS)}")
        return crop

    def _probe(self, job: _Job) -> tuple[MediaInfo | None, MediaInfo | None]:
        """Probe the audio and video files of a job; check the model's modalities are there."""
        src = job.source
        infos: dict[str, MediaInfo] = {}
        for path in {p for p in (src.audio, src.video) if p}:
            infos[path] = probe(path)
        ainfo = infos[src.audio] if src.audio else None
        vinfo = infos[src.video] if src.video else None
        present = {
            "audio": bool(ainfo and ainfo.has_audio),
            "video": bool(vinfo and vinfo.has_video),
        }
        missing = [m for m in self.modalities if not present[m]]
        if missing:
            where = src.video if missing == ["video"] else src.audio or src.video
            raise MediaError(
                where or src.input,
                f"no {' and no '.join(missing)} stream, and this model (modality "
                f"{self.config.modality!r}) needs {' + '.join(self.modalities)}",
            )
        unused = [m for m in ("audio", "video") if present[m] and m not in self.modalities]
        if unused:
            log.info("%s: %s stream ignored: this model uses %s only", src.input,
                     "/".join(unused), "+".join(self.modalities))
        job.modalities = list(self.modalities)
        durations = [i.duration for i in (ainfo, vinfo) if i and i.duration]
        job.duration = max(durations) if durations else None
        return ainfo, vinfo

    def _items(self, job: _Job, crop: str, window: float | None, hop: float | None) -> Iterator[_Item]:
        """Model input rows of one job: one for the whole file, or one per window."""
        ainfo, vinfo = self._probe(job)
        cfg = self.config
        use_audio, use_video = "audio" in self.modalities, "video" in self.modalities
        src = job.source
        if window is None:
            wav = read_audio(src.audio, cfg.sample_rate, 0.0, cfg.max_audio_seconds) if use_audio else None
            vid = self._frames(src.video, vinfo, crop, 0.0, None) if use_video else None
            job.windows.append((0.0, job.duration or 0.0))
            yield _Item(job, 0, wav, vid)
            return
        job.windowed = True
        if not job.duration and use_audio:  # headers without a duration: count the samples
            job.duration = audio_length(src.audio, cfg.sample_rate)
        if not job.duration:
            raise MediaError(src.input, "duration unknown: cannot cut windows")
        spans = [(s, min(s + window, job.duration)) for s in window_starts(job.duration, window, hop)]
        none = itertools.repeat(None)
        audio = iter_audio_spans(src.audio, cfg.sample_rate, spans, cfg.max_audio_seconds) if use_audio else none
        video = self._window_frames(src.video, vinfo, crop, spans) if use_video else none
        for index, (span, wav, vid) in enumerate(zip(spans, audio, video)):
            job.windows.append(span)
            yield _Item(job, index, wav, vid)

    def frame_rate(self, info: MediaInfo) -> float:
        """Frames per second the features are sampled at: the recorded policy, else native."""
        fps = self.settings.get("fps")
        if fps:
            return float(fps)
        return float(info.fps or 30.0)

    def _frames(self, path: str, info: MediaInfo, crop: str, start: float, end: float | None) -> np.ndarray:
        """Embeddings [T, D] of the first max_video_frames frames from `start` (bounded decode)."""
        from foalnet.features.extract import embed_video

        max_frames = int(self.config.max_video_frames)
        stop = start + (max_frames + FRAME_MARGIN) / self.frame_rate(info)
        end = stop if end is None else min(end, stop)
        if info.duration is not None:
            if start >= info.duration:  # a window past the end of a shorter video stream
                return np.zeros((0, int(self.config.video_dim)), np.float32)
            if end >= info.duration:
                end = None  # up to the end of the file
        feats = embed_video(path, self.visual_encoder, crop, start=start, end=end,
                            fps=self.settings.get("fps") or None)
        feats = np.asarray(feats[:max_frames], dtype=np.float32)  # (T, D)
        if feats.ndim != 2 or feats.shape[1] != int(self.config.video_dim):
            raise MediaError(path, f"visual features have shape {feats.shape}, "
                                   f"expected [T, {self.config.video_dim}]")
        return feats

    def _window_frames(self, path: str, info: MediaInfo, crop: str,
                       spans: list[tuple[float, float]]) -> Iterator[np.ndarray]:
        """Embeddings [T, D] per window, in window order, from ONE decoding pass.

        Overlapping windows share the embedding of each frame; only the embeddings of open
        windows are held. Windows starting after the end of the video stream get no frames.
        """
        from foalnet.data.video import FaceCropper, resolve_crop, walk_spans
        from foalnet.features.extract import SpanEmbedder

        max_frames, dim = int(self.config.max_video_frames), int(self.config.video_dim)
        limit = (max_frames + FRAME_MARGIN) / self.frame_rate(info)
        inside = [i for i, (s, _) in enumerate(spans) if info.duration is None or s < info.duration]
        wanted = [(spans[i][0], min(spans[i][1], spans[i][0] + limit)) for i in inside]
        if info.duration is not None:  # the last frames: up to the end of the stream
            wanted = [(s, None if e >= info.duration else e) for s, e in wanted]
        face = FaceCropper() if crop == "face" else None
        embedder = SpanEmbedder(self.visual_encoder, [resolve_crop(crop, None)] * len(wanted), face=face)
        events = walk_spans(path, wanted, fps=self.settings.get("fps") or None)
        position = {k: j for j, k in enumerate(inside)}  # window index -> span index
        ready: dict[int, np.ndarray | str] = {}
        for k, (start, end) in enumerate(spans):
            if k not in position:
                yield np.zeros((0, dim), np.float32)
                continue
            j = position[k]
            while j not in ready:
                event = next(events, None)
                ready.update(embedder.finish() if event is None else embedder.feed(event))
                if event is None and j not in ready:
                    raise MediaError(path, f"window [{start:.2f}, {end:.2f}] s got no frames")
            result = ready.pop(j)
            if isinstance(result, str):
                raise MediaError(path, f"window [{start:.2f}, {end:.2f}] s: {result}")
            yield np.asarray(result[:max_frames], dtype=np.float32)  # (T, D)

    # ----------------------------------------------------------------- scoring
    @torch.inference_mode()
    def _score(self, batch: list[_Item]) -> None:
        """One forward pass over up to batch_size rows; probabilities go back to their jobs."""
        inputs = {}
        if "audio" in self.modalities:
            wave, mask = pad_sequences([it.waveform for it in batch], ())
            inputs["waveform"], inputs["waveform_mask"] = wave.to(self.device), mask.to(self.device)
        if "video" in self.modalities:
            video, mask = pad_sequences([it.video for it in batch], (int(self.config.video_dim),))
            inputs["video"], inputs["video_mask"] = video.to(self.device), mask.to(self.device)
        logits = self.model(**inputs).logits.float()  # (B, C)
        probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()  # (B, C)
        for item, p in zip(batch, probs):
            item.job.scores[item.index] = p

    def _result(self, job: _Job) -> dict:
        """The output dict of one finished job."""
        src = job.source
        out: dict = {"input": src.input}
        if src.audio and src.video and src.audio != src.video:
            out.update(audio=src.audio, video=src.video)
        if job.error is not None:
            out["error"] = job.error
            return out
        probs = np.stack([job.scores[i] for i in range(len(job.windows))])  # (W, C)
        mean = probs.mean(axis=0)
        out.update(
            label=self.labels[int(mean.argmax())],
            probabilities=self._named(mean),
            duration=None if job.duration is None else round(float(job.duration), 3),
            modalities=job.modalities,
        )
        if job.windowed:
            out["timeline"] = [
                {"start": round(s, 3), "end": round(e, 3), "label": self.labels[int(p.argmax())],
                 "probabilities": self._named(p)}
                for (s, e), p in zip(job.windows, probs)
            ]
        return out

    def _named(self, p: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.labels, p)}


def _describe(err: Exception) -> str:
    """A one-line reason: domain errors (MediaError, AudioError, VideoError...) name the file."""
    if hasattr(err, "path") and hasattr(err, "reason"):
        return str(err)
    return f"{type(err).__name__}: {err}"


def check_window(window: float | None, hop: float | None) -> tuple[float | None, float | None]:
    """Validate --window/--hop: hop needs a window; hop defaults to the window."""
    if window is None:
        if hop is not None:
            raise UsageError("hop given without window")
        return None, None
    if not (window > 0 and math.isfinite(window)):
        raise UsageError(f"window must be a positive number of seconds, got {window}")
    hop = window if hop is None else hop
    if not (hop > 0 and math.isfinite(hop)):
        raise UsageError(f"hop must be a positive number of seconds, got {hop}")
    return float(window), float(hop)


def _as_list(x: PathLike | Sequence[PathLike] | None) -> tuple[list[str], bool]:
    """(paths as strings, whether a single path was given)."""
    if x is None:
        return [], False
    if isinstance(x, (str, os.PathLike)):
        return [str(x)], True
    return [str(p) for p in x], False


def make_sources(
    path_or_paths: PathLike | Sequence[PathLike] | None,
    audio: PathLike | Sequence[PathLike] | None = None,
    video: PathLike | Sequence[PathLike] | None = None,
) -> tuple[list[Source], bool]:
    """Sources from plain paths, or from paired audio/video files; (sources, single)."""
    paths, single = _as_list(path_or_paths)
    audios, single_a = _as_list(audio)
    videos, single_v = _as_list(video)
    if paths and (audios or videos):
        raise UsageError("give input paths, or audio/video pairs, not both")
    if paths:
        return [Source(p, p, p) for p in paths], single
    if not audios and not videos:
        raise UsageError("nothing to predict: no input path, no audio and no video")
    if audios and videos and len(audios) != len(videos):
        raise UsageError(f"{len(audios)} audio files but {len(videos)} video files: pair them one to one")
    n = max(len(audios), len(videos))
    audios = audios or [None] * n
    videos = videos or [None] * n
    single = (not audios[0] or single_a) and (not videos[0] or single_v)
    return [Source(v or a, a, v) for a, v in zip(audios, videos)], single
