"""Speaker-level normalisation of cached audio front-end features (no labels used).

Why: on acted speech most of the frame features' variance between clips of different people is
the voice (pitch height, loudness, formants), not the emotion; z-scoring each channel with the
speaker's own statistics removes it. The eGeMAPS + SVM baseline gains most from the same step
(``foalnet svm --speaker-norm``) and the offline encoder with eGeMAPS LLDs gains from it too
(model/audio_offline.py, the measurements).

``speaker_statistics(store, records)``: per speaker (the manifest's ``speaker``), the mean and std
of every channel over all valid frames of all its utterances in ``store``. Training uses every
split's own speakers' statistics (train, dev and test speakers are disjoint; a test speaker's
come from its own test clips, unlabelled, as a deployed system would use enrolment audio).
``pooled_statistics``: the training speakers' mean of means and root mean variance: what an
utterance without a known speaker is normalised with (the model keeps it, see
``OfflineAudioEncoder.speaker_norm``): it then looks like an average training speaker, its own
voice offset is not removed.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

POOLED = "\x00pooled"  # key of the pooled statistics beside the speakers' (no speaker id is this)
STD_FLOOR = 1e-6  # a channel (almost) constant for a speaker is centred, not divided


def speaker_statistics(store, records: Iterable[dict]) -> dict[str | None, tuple[np.ndarray, np.ndarray]]:
    """``{speaker: (mean [C], std [C])}`` float32 over the frames of the speaker's items in
    ``store`` (items it does not hold, or with no frame, are skipped; a speaker with no frame at
    all is left out). std below ``STD_FLOOR`` is replaced by 1."""
    sums: dict[str | None, list] = {}
    for record in records:
        if not store.has(record["id"]):
            continue
        x = np.asarray(store.load(record["id"]), dtype=np.float64)  # (T, C)
        if len(x) == 0:
            continue
        acc = sums.setdefault(record.get("speaker"), [0, 0.0, 0.0])
        acc[0] += len(x)
        acc[1] = acc[1] + x.sum(0)
        acc[2] = acc[2] + (x * x).sum(0)
    stats = {}
    for speaker, (n, s1, s2) in sums.items():
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
        stats[speaker] = (mean.astype(np.float32), np.where(std < STD_FLOOR, 1.0, std).astype(np.float32))
    return stats


def pooled_statistics(stats: dict, speakers: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the speakers' means, sqrt of the mean of their variances), float32 [C]."""
    chosen = [stats[s] for s in dict.fromkeys(speakers) if s in stats]
    if not chosen:
        raise ValueError("no speaker with front-end frames to pool statistics from")
    mean = np.mean([m for m, _ in chosen], axis=0)
    std = np.sqrt(np.mean([s.astype(np.float64) ** 2 for _, s in chosen], axis=0))
    return mean.astype(np.float32), std.astype(np.float32)


def normalise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(features [T, C] - mean) / std, float32."""
    return ((features - mean) / std).astype(np.float32)
