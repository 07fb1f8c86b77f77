"""Video -> per-utterance visual features: the `extract-visual` driver and `embed_video`.

Both go through `SpanEmbedder`, so training features and inference features sample, crop and
embed frames the same way. Per dialog video: one decode pass (`walk_spans`); each frame is
cropped once per region needed by the spans that own it (spans of the same speaker share frame
embeddings), crops are embedded in batches, and an utterance's (T, D) array is assembled and
stored as soon as its span is closed and its frames are embedded. Only embeddings of open spans
are held, never an utterance of raw frames.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from foalnet.data.video import (FaceCropper, SpanClosed, SpanFrame, VideoError, crop_region,
                                resolve_crop, walk_spans)
from foalnet.features.base import VisualEncoder
from foalnet.features.store import VisualFeatureStore, feature_key, store_slug
from foalnet.features.workers import Workers, finish_shared, open_shared
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

FRAME_RULE = "overlap"  # a frame belongs to a span when its display interval overlaps it
STORE_FORMAT = "npy-float16-v1"
CLI_CROPS = ("side", "full", "face", "left", "right")

Ref = tuple[int, str]  # (frame index in the file, region)


def crop_frame(image: np.ndarray, region: str, face: FaceCropper | None = None) -> np.ndarray:
    """The part of a frame the visual encoder sees: ``region`` is left|right|full, or
    face:<left|right|full> (the face found in that part, by ``face``, which holds boxes per region)."""
    if region.startswith("face:"):
        part = crop_region(image, region.split(":", 1)[1])
        if face is None:
            raise ValueError("face regions need a FaceCropper")
        return face(part, key=region)
    return crop_region(image, region)


class SpanEmbedder:
    """Turns one `walk_spans` pass into per-span (T, D) float16 arrays, embedding in batches.

    `regions[i]` is the crop of span i ("left", "right", "full", "face:<region>"). `feed`
    takes walk events and returns finished spans as (index, array or error reason).
    """

    def __init__(self, encoder: VisualEncoder, regions: Sequence[str], batch_size: int = 32,
                 face: FaceCropper | None = None):
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder, self.regions, self.batch_size, self.face = encoder, regions, batch_size, face
        self.embedded_frames = 0
        self._refs: dict[int, list[Ref]] = defaultdict(list)
        self._count: dict[Ref, int] = defaultdict(int)  # open spans using each ref
        self._vectors: dict[Ref, np.ndarray] = {}
        self._batch: list[np.ndarray] = []
        self._batch_refs: list[Ref] = []
        self._queued: set[Ref] = set()
        self._ready: list[int] = []  # closed spans waiting for their last embeddings

    def _crop(self, image: np.ndarray, region: str) -> np.ndarray:
        return crop_frame(image, region, self.face)

    def _flush(self) -> None:
        if not self._batch:
            return
        vectors = self.encoder.embed_images(self._batch)  # (N, D)
        for ref, vector in zip(self._batch_refs, vectors):
            self._vectors[ref] = vector
        self.embedded_frames += len(self._batch)
        self._batch, self._batch_refs = [], []
        self._queued.clear()

    def _release(self, span: int) -> None:
        for ref in self._refs.pop(span, []):
            self._count[ref] -= 1
            if self._count[ref] == 0:
                del self._count[ref]
                self._vectors.pop(ref, None)

    def _assemble(self) -> list[tuple[int, np.ndarray | str]]:
        """Arrays of the closed spans whose frames are all embedded."""
        done, waiting = [], []
        for span in self._ready:
            refs = self._refs.get(span, [])
            if not refs:
                done.append((span, "no frames in the span"))
            elif all(r in self._vectors for r in refs):
                done.append((span, np.stack([self._vectors[r] for r in refs]).astype(np.float16)))
            else:
                waiting.append(span)
                continue
            self._release(span)
        self._ready = waiting
        return done

    def feed(self, event: SpanFrame | SpanClosed) -> list[tuple[int, np.ndarray | str]]:
        if isinstance(event, SpanFrame):
            for span in event.spans:
                ref = (event.index, self.regions[span])
                if ref not in self._vectors and ref not in self._queued:
                    self._batch.append(self._crop(event.image, ref[1]))
                    self._batch_refs.append(ref)
                    self._queued.add(ref)
                self._count[ref] += 1
                self._refs[span].append(ref)
            if len(self._batch) >= self.batch_size:
                self._flush()
                return self._assemble()
            return []
        if event.error:
            self._release(event.span)
            return [(event.span, event.error)]
        self._ready.append(event.span)
        return self._assemble()

    def finish(self) -> list[tuple[int, np.ndarray | str]]:
        self._flush()
        return self._assemble()


def _face_cropper(crop: str) -> FaceCropper | None:
    return FaceCropper() if crop == "face" else None


def frame_settings(encoder: VisualEncoder, crop: str, fps: float | None,
                   face: FaceCropper | None) -> dict:
    """The store's meta.json: how its features were made (flat encoder settings included)."""
    settings = dict(encoder.settings())
    meta = {"encoder": encoder.name, "dim": int(encoder.dim), "crop": crop, "fps": fps,
            "frame_rule": FRAME_RULE, "dtype": "float16", "format": STORE_FORMAT}
    clash = (set(settings) & set(meta)) - {"dim"}
    if clash:
        raise ValueError(f"encoder settings {sorted(clash)} clash with store fields")
    meta.update(settings)
    if face is not None:
        meta["face"] = face.settings()
    return meta


def embed_video(path: str | os.PathLike, encoder: VisualEncoder, crop: str = "full",
                start: float | None = None, end: float | None = None, fps: float | None = None,
                batch_size: int = 32) -> np.ndarray:
    """Features of one file (or one span of it), exactly as `extract-visual` makes them.

    crop: full | left | right | face (searched in the full frame) | face:left | face:right |
    side (= full here: a new file has no recorded speaker side). Returns float16 (T, D), the
    dtype of the cache. Raises VideoError naming the file and the problem.
    """
    if crop in ("face:left", "face:right"):
        region = crop
    elif crop in CLI_CROPS:
        region = resolve_crop(crop, None)
    else:
        raise UsageError(f"unknown crop {crop!r}; expected one of {', '.join(CLI_CROPS)}")
    face = _face_cropper("face" if region.startswith("face:") else crop)
    embedder = SpanEmbedder(encoder, [region], batch_size, face)
    results: list[tuple[int, np.ndarray | str]] = []
    for event in walk_spans(path, [(start, end)], fps=fps):
        results += embedder.feed(event)
    results += embedder.finish()
    if not results:
        raise VideoError(path, "no frames")
    _, result = results[0]
    if isinstance(result, str):
        raise VideoError(path, result)
    return result


# ---------------------------------------------------------------------------- the driver
@dataclass
class _Item:
    id: str
    video: str
    start: float | None
    end: float | None
    region: str
    key: str


@dataclass
class ExtractReport:
    """What one extraction run did."""

    slug: str
    done: int = 0
    reused: int = 0
    failed: int = 0
    audio_only: int = 0  # records without a video (audio-only corpora): nothing to extract, no failure
    frames: int = 0  # frames embedded in this run
    seconds: float = 0.0
    face_fallbacks: int = 0
    rejected: list[dict] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def utterances_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def merged(cls, reports: list["ExtractReport"]) -> "ExtractReport":
        """One report of the processes of a multi-process extraction (disjoint shares)."""
        out = cls(reports[0].slug, seconds=max(r.seconds for r in reports))
        for r in reports:
            for name in ("done", "reused", "audio_only", "frames", "face_fallbacks"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            out.rejected += r.rejected
        out.failed = len(out.rejected)
        return out

    def summary(self) -> str:
        text = (f"visual features {self.slug}: done {self.done}, reused {self.reused}, "
                f"failed {self.failed}; {self.frames} frames in {self.seconds:.1f} s "
                f"({self.frames_per_second:.0f} frames/s, {self.utterances_per_second:.1f} utt/s)")
        if self.audio_only:
            text += f"; {self.audio_only} audio-only records (no video) skipped"
        if self.face_fallbacks:
            text += f"; no face found in {self.face_fallbacks} frames (whole region used)"
        return text


def _read_records(data_dir: Path) -> list[dict]:
    from foalnet.data.manifest import read_manifest

    return read_manifest(data_dir)


def _plan(records: Iterable[dict], store: VisualFeatureStore, crop: str, meta: dict,
          report: ExtractReport) -> list[_Item]:
    """Items still to extract; reused and impossible ones are counted on the way."""
    todo = []
    for rec in records:
        video = rec.get("video")
        if not video:
            report.audio_only += 1
            continue
        video = os.path.abspath(video)
        try:
            st = os.stat(video)
        except OSError as err:
            reason = "file not found" if isinstance(err, FileNotFoundError) else str(err)
            report.rejected.append({"id": rec["id"], "path": video, "reason": reason})
            continue
        region = resolve_crop(crop, rec.get("side"))
        key = feature_key({"video": video, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "start": rec.get("start"), "end": rec.get("end"), "region": region,
                           "store": meta})
        if store.key_of(rec["id"]) == key and store.has(rec["id"]):
            report.reused += 1
            continue
        todo.append(_Item(rec["id"], video, rec.get("start"), rec.get("end"), region, key))
    return todo


def _serve_video(items: list[_Item], embedder: SpanEmbedder, fps: float | None,
                 ) -> Iterator[tuple[_Item, np.ndarray | str]]:
    """All items of one video from one decode pass: (item, features or failure reason)."""
    served: set[int] = set()
    try:
        for event in walk_spans(items[0].video, [(it.start, it.end) for it in items], fps=fps):
            for span, result in embedder.feed(event):
                served.add(span)
                yield items[span], result
        for span, result in embedder.finish():
            served.add(span)
            yield items[span], result
    except VideoError as err:  # the file cannot be opened: nothing of it can be served
        for span, item in enumerate(items):
            if span not in served:
                yield item, err.reason


def extract_visual(data_dir: str | os.PathLike, encoder: VisualEncoder, crop: str = "side",
                   batch_size: int = 32, fps: float | None = None,
                   progress: bool = True, workers: Workers | None = None) -> ExtractReport:
    """Fill DATA_DIR/visual/<slug>/ for every manifest record; resumable and idempotent.

    Failed items are logged (id, path, reason) and listed in the store's rejected.jsonl; items
    already extracted with the same key are reused, never rewritten. ``workers``: this process's
    share when several extract together (``Workers.from_env()`` under a launcher): every
    world-th dialog video; the report returned is the merged one of all processes.
    """
    from tqdm.auto import tqdm

    if crop not in CLI_CROPS:
        raise UsageError(f"unknown crop {crop!r}; expected one of {', '.join(CLI_CROPS)}")
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    records = _read_records(data_dir)
    if records and not any(rec.get("video") for rec in records):
        raise UsageError(f"{data_dir}: no record of the manifest has a video (an audio-only "
                         "corpus): nothing to extract; train it with --modality audio")
    face = _face_cropper(crop)
    meta = frame_settings(encoder, crop, fps, face)
    slug = store_slug(encoder.name, crop, fps)
    workers = workers or Workers()
    store = open_shared(VisualFeatureStore.create(data_dir, slug, meta, shard=workers.shard), workers)
    if workers.world > 1:  # whole videos per process (one decode pass each); records without one: main
        mine = set(workers.take(sorted({os.path.abspath(r["video"]) for r in records if r.get("video")})))
        records = [r for r in records if (os.path.abspath(r["video"]) in mine if r.get("video")
                                          else workers.is_main)]
    report = ExtractReport(slug)
    todo = _plan(records, store, crop, meta, report)
    by_video: dict[str, list[_Item]] = defaultdict(list)
    for item in todo:
        by_video[item.video].append(item)

    bar = tqdm(total=len(todo), unit="utt", desc=f"extract-visual {slug}",
               disable=not progress or not workers.is_main)
    try:
        for video in sorted(by_video):
            items = by_video[video]
            if face is not None:
                face.reset()  # a held box belongs to its own video
            embedder = SpanEmbedder(encoder, [it.region for it in items], batch_size, face)
            for item, result in _serve_video(items, embedder, fps):
                if isinstance(result, str):
                    report.rejected.append({"id": item.id, "path": item.video, "reason": result})
                else:
                    store.put(item.id, item.key, result)
                    report.done += 1
                frames = report.frames + embedder.embedded_frames
                bar.set_postfix(frames_s=f"{frames / (time.perf_counter() - t0):.0f}",
                                refresh=False)
                bar.update(1)
            report.frames += embedder.embedded_frames
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
        report.failed = len(report.rejected)
        report.face_fallbacks = face.fallbacks if face is not None else 0
        if workers.world == 1:
            store.write_rejected(report.rejected)
    for rej in report.rejected:
        log.warning("rejected %s (%s): %s", rej["id"], rej["path"], rej["reason"])
    report = finish_shared(store, workers, report, ExtractReport.merged)
    if workers.is_main:
        log.info("%s", report.summary())
    return report
