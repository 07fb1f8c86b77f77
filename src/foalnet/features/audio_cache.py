"""Audio front-end cache: run an audio encoder's fixed front end once per utterance.

Why: the first part of the audio encoder never changes during training (WavLM's frozen CNN
feature encoder, the offline encoder's DSP features), yet a plain training loop recomputes it for
every item in every epoch of every fold. At the paper's dims it is about a third of a CPU
training step (benchmarks/train_step.py). Its valid frames never depend on padding, so computing
it per utterance and training from the stored output is the same function
(tests/test_audio_cache.py checks logits and losses against training from the waveform).

Store: DATA_DIR/audio_frontend/<slug>/ (``AudioFrontendStore``: float32 (T, C) per utterance).
The slug and every item's key hash what determines the output (``FoalNet.audio_frontend_fingerprint``:
front-end config, a hash of the frozen weights, waveform normalisation, crop length; the wav
path, size, mtime and span), so a changed file or encoder is recomputed, never served stale.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import ClassVar, Iterable

import numpy as np
import torch

from foalnet.features.store import AudioFrontendStore, CacheReport, feature_key
from foalnet.features.workers import Workers, finish_shared, open_shared
from foalnet.errors import UsageError

log = logging.getLogger(__name__)


def fingerprint_hash(fingerprint: dict) -> str:
    """Short stable hash of a front-end fingerprint (JSON, sorted keys)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def frontend_slug(fingerprint: dict) -> str:
    """Store folder name: the front end's kind plus its hash, e.g. ``offline-dsp-1a2b3c4d5e6f``."""
    return f"{fingerprint['encoder']['kind']}-{fingerprint_hash(fingerprint)}"


def item_key(record: dict, frontend_hash: str) -> str:
    """Key of one cached array; raises OSError when the wav cannot be stat'ed."""
    wav = os.path.abspath(record["wav"])
    st = os.stat(wav)
    fields = {"wav": wav, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "audio_start": record.get("audio_start"), "audio_end": record.get("audio_end"),
              "frontend": frontend_hash}
    if record.get("speed") is not None:  # a speed-perturbed copy (only then: other keys unchanged)
        fields["speed"] = float(record["speed"])
    return feature_key(fields)


@dataclass
class AudioCacheReport(CacheReport):
    """A cache fill's report, with the seconds of audio it computed."""

    KIND: ClassVar[str] = "audio front end"
    audio_seconds: float = 0.0

    @classmethod
    def merged(cls, reports: list["AudioCacheReport"]) -> "AudioCacheReport":
        """One report of the processes of a multi-process fill (disjoint shares)."""
        return cls(reports[0].slug, done=sum(r.done for r in reports), reused=sum(r.reused for r in reports),
                   seconds=max(r.seconds for r in reports),
                   audio_seconds=sum(r.audio_seconds for r in reports),
                   rejected=[x for r in reports for x in r.rejected])

    def summary(self) -> str:
        speed = f", {self.audio_seconds / self.seconds:.0f} s of audio per s" if self.seconds > 0 and self.done else ""
        return super().summary() + speed


def utterance_frontend(model, wave: torch.Tensor) -> np.ndarray:
    """One utterance's front-end output, valid frames only: float32 [T, C] (what the cache holds)."""
    features, mask = model.audio_frontend(wave[None], torch.ones(1, len(wave), dtype=torch.bool, device=wave.device))
    return features[0, mask[0]].float().cpu().numpy()


def frontend_dim(model) -> int:
    """Channels of the front end's output (one second of silence through it)."""
    silence = torch.zeros(int(model.config.sample_rate), device=next(model.parameters()).device)
    return int(utterance_frontend(model, silence).shape[1])


def open_audio_store(data_dir: str | os.PathLike, model, shard: str | None = None) -> AudioFrontendStore | None:
    """The (possibly partly filled) store for this model's front end; None if it has none."""
    fingerprint = model.audio_frontend_fingerprint()
    if fingerprint is None:
        return None
    meta = {"encoder": model.config.audio_encoder, "dim": frontend_dim(model), "dtype": "float32",
            "fingerprint": fingerprint, "format": 1}
    return AudioFrontendStore.create(data_dir, frontend_slug(fingerprint), meta, shard=shard)


def build_audio_cache(data_dir: str | os.PathLike, model, records: Iterable[dict],
                      progress: bool = True, workers: Workers | None = None,
                      ) -> tuple[AudioFrontendStore, AudioCacheReport]:
    """Fill the store for ``records`` (missing or changed items only) on the model's device.

    ``workers``: this process's share when several fill the store together (every world-th
    record; ``Workers.from_env()`` under a launcher); the report is the merged one of all.

    Unreadable audio is reported per item (id, path, reason) in the report and in the store's
    rejected.jsonl; the other items are still cached. Raises ValueError when the model's audio
    encoder has no fixed front end."""
    from tqdm.auto import tqdm

    from foalnet.data.audio import AudioError, load_record_audio

    started = time.perf_counter()
    workers = workers or Workers()
    store = open_audio_store(data_dir, model, shard=workers.shard)
    if store is None:
        raise UsageError(f"audio encoder {model.config.audio_encoder!r} has no fixed front end to cache "
                         "(its CNN trains, or it normalises over padded time)")
    open_shared(store, workers)
    records = workers.take(list(records))
    frontend_hash = fingerprint_hash(store.meta["fingerprint"])
    report = AudioCacheReport(store.slug)
    device = next(model.parameters()).device
    sample_rate, max_seconds = int(model.config.sample_rate), float(model.config.max_audio_seconds)
    was_training = model.training
    model.eval()
    try:
        for record in tqdm(records, unit="utt", desc=f"audio front end {store.slug}",
                           disable=not progress or not workers.is_main):
            path = str(record.get("wav"))
            try:
                key = item_key(record, frontend_hash)
                if store.key_of(record["id"]) == key and store.has(record["id"]):
                    report.reused += 1
                    continue
                wave = torch.from_numpy(load_record_audio(record, sample_rate, max_seconds)).to(device)
            except (OSError, AudioError) as err:
                reason = "file not found" if isinstance(err, FileNotFoundError) else str(getattr(err, "reason", err))
                report.rejected.append({"id": record["id"], "path": path, "reason": reason})
                log.warning("%s (%s): %s", record["id"], path, reason)
                continue
            store.put(record["id"], key, utterance_frontend(model, wave))
            report.done += 1
            report.audio_seconds += len(wave) / sample_rate
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - started
    if workers.world == 1:
        store.write_rejected(report.rejected)
    return store, finish_shared(store, workers, report, AudioCacheReport.merged)
