"""Training data: manifest records -> (waveform, visual features, label) -> padded batches.

- ``EmotionDataset`` reads one utterance: audio with ``load_audio`` (first ``max_audio_seconds``)
  or, when an ``AudioFrontendStore`` is given, the audio encoder's cached front-end output
  (``foalnet.features.audio_cache``: the same function, less work per step); cached visual
  features from ``VisualFeatureStore`` (first ``max_video_frames``). A corrupt or
  missing file does not stop training: the item comes back with ``error`` set, is reported by id
  and counted by the loop.
- ``collate`` pads to the LONGEST item of the batch (not to a fixed 6 s) and builds the masks.
  Training batches drop failed items; evaluation batches keep them as all-masked placeholder rows
  (``valid`` = False) so every process has the same batch size for ``gather_for_metrics``.
- ``BalancedSampler``: spec §2 class-balanced draws with replacement (weight 1/count(class), as
  many draws as items), deterministic in (seed, epoch); optionally length-grouped, which only
  reorders the same draws, so the class balance is unchanged.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from foalnet.data.padding import pad_sequences
from foalnet.features.speaker_norm import POOLED, normalise
from foalnet.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class Item:
    """One utterance, or the reason it could not be read."""

    index: int
    id: str
    label: int
    waveform: np.ndarray | None = None  # float32 [S]
    video: np.ndarray | None = None  # float32 [T, D]
    error: str | None = None
    audio_features: np.ndarray | None = None  # float32 [T, C] cached front-end output (instead of waveform)


def _item_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this item's file is bad" (not a bug in the code)."""
    errors: list[type[BaseException]] = [OSError, EOFError]
    try:
        from foalnet.data.audio import AudioError

        errors.append(AudioError)
    except ImportError:  # pragma: no cover - data stage missing
        pass
    for module in ("foalnet.features.store", "foalnet.features.base"):
        try:
            errors.append(__import__(module, fromlist=["FeatureError"]).FeatureError)
            break
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


class EmotionDataset(Dataset):
    """Manifest records -> ``Item`` (audio crop, visual features, label index)."""

    def __init__(
        self,
        records: Sequence[dict],
        labels: Sequence[str],
        store=None,
        *,
        use_audio: bool = True,
        use_video: bool = True,
        sample_rate: int = 16000,
        max_audio_seconds: float = 6.0,
        max_video_frames: int = 180,
        audio_store=None,
        failed: dict[str, str] | None = None,
        audio_norm: dict | None = None,
    ) -> None:
        if use_video and store is None:
            raise ValueError("use_video=True needs a VisualFeatureStore")
        self.records = list(records)
        self.label_index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({r["label"] for r in self.records} - set(self.label_index))
        if unknown:
            raise UsageError(f"manifest labels {unknown} are not in the model labels {list(labels)}")
        self.store = store
        self.audio_store = audio_store  # AudioFrontendStore or None (then the waveform is read)
        self.use_audio, self.use_video = use_audio, use_video
        self.sample_rate = sample_rate
        self.max_samples = int(round(max_audio_seconds * sample_rate))
        self.max_frames = max_video_frames
        self.failed: dict[str, str] = dict(failed or {})  # id -> reason, so a bad file is read only once
        self._errors = _item_errors()
        # {speaker: (mean [C], std [C])}: cached features z-scored per speaker (speaker_norm);
        # a speaker missing from it gets the POOLED entry (the training speakers' statistics)
        self.audio_norm = audio_norm

    def __len__(self) -> int:
        return len(self.records)

    def targets(self) -> list[int]:
        return [self.label_index[r["label"]] for r in self.records]

    def durations(self) -> list[float]:
        """Approximate cropped audio length per item (seconds) from the manifest spans."""
        out = []
        for r in self.records:
            start, end = r.get("audio_start"), r.get("audio_end")
            if start is None or end is None:
                start, end = r.get("start"), r.get("end")
            span = (end - start) if start is not None and end is not None else 0.0
            out.append(min(max(span, 0.0), self.max_samples / self.sample_rate))
        return out

    def __getitem__(self, index: int) -> Item:
        record = self.records[index]
        item = Item(index=index, id=record["id"], label=self.label_index[record["label"]])
        if record["id"] in self.failed:
            item.error = self.failed[record["id"]]
            return item
        try:
            if self.use_audio and self.audio_store is not None:
                item.audio_features = self._audio_features(record)
            elif self.use_audio:
                item.waveform = self._audio(record)
            if self.use_video:
                item.video = self._video(record)
        except self._errors as err:
            item.error = f"{type(err).__name__}: {err}"
            self.failed[record["id"]] = item.error
            item.waveform = item.video = item.audio_features = None
        return item

    def _audio(self, record: dict) -> np.ndarray:
        from foalnet.data.audio import load_record_audio

        return load_record_audio(record, self.sample_rate, self.max_samples / self.sample_rate)

    def _audio_features(self, record: dict) -> np.ndarray:
        feats = np.array(self.audio_store.load(record["id"]), dtype=np.float32)  # (T, C), out of the memmap
        if not np.isfinite(feats).all():
            raise OSError(f"cached audio front-end features of {record['id']} contain NaN/inf")
        if self.audio_norm is not None:
            mean, std = self.audio_norm.get(record.get("speaker"), self.audio_norm[POOLED])
            feats = normalise(feats, mean, std)
        return feats

    def _video(self, record: dict) -> np.ndarray:
        feats = self.store.load(record["id"])  # float16 [T, D]
        if feats.ndim != 2 or feats.shape[1] != self.store.dim:
            raise OSError(f"visual features of {record['id']} have shape {feats.shape}, "
                          f"expected [T, {self.store.dim}]")
        feats = np.asarray(feats[: self.max_frames], dtype=np.float32)  # first 180 frames
        if not np.isfinite(feats).all():
            raise OSError(f"visual features of {record['id']} contain NaN/inf")
        return feats


class Collator:
    """Pad a list of ``Item`` to the longest in the batch; keep or drop failed items."""

    def __init__(self, use_audio: bool, use_video: bool, video_dim: int, keep_failed: bool,
                 audio_feature_dim: int | None = None):
        self.use_audio, self.use_video = use_audio, use_video
        self.video_dim = video_dim
        self.audio_feature_dim = audio_feature_dim  # set: items carry cached audio features
        self.keep_failed = keep_failed

    def __call__(self, items: list[Item]) -> dict:
        failed = [(it.id, it.error) for it in items if it.error]
        if not self.keep_failed:
            items = [it for it in items if not it.error]
        batch = {
            "ids": [it.id for it in items],
            "index": torch.tensor([it.index for it in items], dtype=torch.long),
            "labels": torch.tensor([it.label for it in items], dtype=torch.long),
            "valid": torch.tensor([not it.error for it in items], dtype=torch.bool),
            "failed": failed,
        }
        if self.use_audio and self.audio_feature_dim is not None:
            feats, mask = pad_sequences([it.audio_features for it in items], (self.audio_feature_dim,))
            batch["audio_features"], batch["audio_features_mask"] = feats, mask  # (B, T, C), (B, T)
        elif self.use_audio:
            wave, mask = pad_sequences([it.waveform for it in items], ())
            batch["waveform"], batch["waveform_mask"] = wave, mask  # (B, S), (B, S)
        if self.use_video:
            video, mask = pad_sequences([it.video for it in items], (self.video_dim,))
            batch["video"], batch["video_mask"] = video, mask  # (B, T, D), (B, T)
        return batch


class BalancedSampler(Sampler[int]):
    """Class-balanced draws with replacement (spec §2), deterministic in (seed, epoch).

    ``len(self)`` draws per epoch, item i drawn with probability proportional to 1/count(label_i).
    With ``lengths`` the draws of each window of ``group_batches`` batches are sorted by length,
    cut into batches and the batches shuffled: less padding, same multiset of draws.
    """

    def __init__(
        self,
        targets: Sequence[int],
        seed: int,
        balanced: bool = True,
        lengths: Sequence[float] | None = None,
        batch_size: int = 16,
        group_batches: int = 50,
        draws: int | None = None,
    ) -> None:
        """``draws``: items drawn per epoch (default: one per item; speed-perturbed copies keep
        the originals' count, so an epoch is as long as without them)."""
        if not targets:
            raise ValueError("BalancedSampler needs at least one item")
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)
        self.seed, self.balanced = seed, balanced
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.float64)
        self.batch_size, self.group_batches = batch_size, group_batches
        self.draws = len(self.targets) if draws is None else int(draws)
        self.epoch = 0

    def __len__(self) -> int:
        return self.draws

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def weights(self) -> torch.Tensor:
        counts = torch.bincount(self.targets).double()
        return 1.0 / counts[self.targets]

    def indices(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.targets)
        if self.balanced:
            draws = torch.multinomial(self.weights(), self.draws, replacement=True, generator=gen)
        else:
            draws = torch.randperm(n, generator=gen)[: self.draws]
        if self.lengths is not None:
            draws = self._group_by_length(draws, gen)
        return draws.tolist()

    def _group_by_length(self, draws: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Sort each window by length, cut into batches, shuffle the FULL batches, short one last.

        The DataLoader re-cuts this stream every ``batch_size`` indices, so a short batch in the
        middle would shift every later cut across two length groups; at the end it stays whole.
        """
        window = self.batch_size * self.group_batches  # a multiple of batch_size: one short batch at most
        batches = []
        for start in range(0, len(draws), window):
            chunk = draws[start : start + window]
            order = torch.argsort(self.lengths[chunk], descending=True, stable=True)
            batches += list(chunk[order].split(self.batch_size))
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        perm = torch.randperm(len(full), generator=gen).tolist()
        return torch.cat([full[i] for i in perm] + short)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())


def steps_per_epoch(num_items: int, batch_size: int, num_processes: int, grad_accum: int) -> int:
    """Optimiser steps in one epoch (for the schedule and the progress bar)."""
    batches = math.ceil(num_items / (batch_size * num_processes))
    return max(1, math.ceil(batches / grad_accum))
