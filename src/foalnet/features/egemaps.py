"""eGeMAPS functionals (openSMILE) per utterance: the classical baseline's features, cached.

Why a cache: the classical baseline (``foalnet svm``, ``ablate`` row ``egemaps_svm``) runs the
same 88 functionals of every utterance in every fold and every rerun; openSMILE takes about
0.03 s per second of audio, so the features are computed once per file, span and settings.

Store: DATA_DIR/egemaps/<slug>/ with the layout of ``features/store.py`` (``EgemapsStore``: one
float32 (1, 88) array per utterance, ``index.jsonl``, ``meta.json``, ``rejected.jsonl``). The slug
hashes the settings and the opensmile version (another version gets another folder, never mixed
values); an item's key hashes the audio path, size, mtime, span and the settings
(``audio_cache.item_key``), so a changed file is recomputed, never served stale.
An item whose audio cannot be read, or that is too short for openSMILE's functionals (it then
returns NaN), is reported with its reason (``rejected``, rejected.jsonl); the rest goes on.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import ClassVar, Iterable

import numpy as np

from foalnet.features.audio_cache import fingerprint_hash, item_key
from foalnet.features.store import CacheReport, FeatureStore
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

FEATURE_SET = "eGeMAPSv02"
FEATURE_LEVEL = "Functionals"


class EgemapsStore(FeatureStore):
    """eGeMAPS functionals of each utterance: float32 (1, 88), one row per utterance."""

    SUBDIR = "egemaps"
    KIND = "eGeMAPS"
    DTYPE = np.float32
    HINT = "foalnet svm"


@dataclass(frozen=True)
class EgemapsSettings:
    """What determines the features (all of it goes into the slug and every item key)."""

    # None: each file at its own rate (openSMILE's usual use; the README anchors: RAVDESS 48 kHz,
    # labels_all.csv C=1 UA 0.612 at 48 kHz, 0.560 resampled to 16 kHz); or resample to this rate
    sample_rate: int | None = None
    feature_set: str = FEATURE_SET
    feature_level: str = FEATURE_LEVEL

    def fingerprint(self) -> dict:
        """The settings plus the openSMILE version (its binaries define the values)."""
        import opensmile

        return {**asdict(self), "opensmile": opensmile.__version__, "format": 1}


@dataclass
class EgemapsReport(CacheReport):
    """What one extraction run did (``CacheReport``)."""

    KIND: ClassVar[str] = "eGeMAPS"


def store_slug(fingerprint: dict) -> str:
    """``egemapsv02-functionals-<hash>``: readable kind + the settings' hash."""
    return f"{fingerprint['feature_set'].lower()}-{fingerprint['feature_level'].lower()}-" \
           f"{fingerprint_hash(fingerprint)}"


def open_store(data_dir: str | os.PathLike, settings: EgemapsSettings) -> EgemapsStore:
    """The (possibly partly filled) store of these settings, created if needed."""
    fingerprint = settings.fingerprint()
    meta = {"encoder": f"opensmile {settings.feature_set} {settings.feature_level}",
            "dim": len(_smile(settings).feature_names), "dtype": "float32",
            "fingerprint": fingerprint, "format": 1}
    return EgemapsStore.create(data_dir, store_slug(fingerprint), meta)


def _smile(settings: EgemapsSettings):
    return smile(settings.feature_set, settings.feature_level)


@functools.lru_cache(maxsize=None)
def smile(feature_set: str, feature_level: str):
    """One openSMILE extractor per feature set and level (building one loads its config)."""
    import opensmile

    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=getattr(opensmile.FeatureLevel, feature_level))


def feature_names(settings: EgemapsSettings = EgemapsSettings()) -> list[str]:
    """The 88 functional names in column order (eGeMAPSv02)."""
    return list(_smile(settings).feature_names)


def functionals(smile, wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 (1, D) functionals of one waveform; ValueError when openSMILE gives none.

    openSMILE fills a segment shorter than its analysis windows with NaN (and warns); that is
    an item we cannot describe, so it is an error naming the length, not a NaN row in the SVM."""
    if len(wave) == 0:
        raise UsageError("no audio samples in the item's span")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        values = smile.process_signal(wave, sample_rate).to_numpy(dtype=np.float32)
    if values.shape[0] != 1 or not np.isfinite(values).all():
        raise UsageError(f"openSMILE gave no finite functionals ({len(wave) / sample_rate:.3f} s "
                         "of audio: too short for its analysis windows?)")
    return values


def build_egemaps_cache(data_dir: str | os.PathLike, records: Iterable[dict],
                        settings: EgemapsSettings = EgemapsSettings(), progress: bool = True,
                        ) -> tuple[EgemapsStore, EgemapsReport]:
    """Compute the missing or changed items of ``records``; reuse the rest.

    Failed items are in the report and the store's rejected.jsonl (replaced per run)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    store = open_store(data_dir, settings)
    smile, settings_hash = _smile(settings), fingerprint_hash(store.meta["fingerprint"])
    report = EgemapsReport(store.slug)
    for record in tqdm(list(records), unit="utt", desc=f"eGeMAPS {store.slug}",
                       disable=not progress):
        outcome = _one_item(store, smile, settings, settings_hash, record)
        if isinstance(outcome, dict):
            report.rejected.append(outcome)
            log.warning("%s (%s): %s", outcome["id"], outcome["path"], outcome["reason"])
        elif outcome:
            report.done += 1
        else:
            report.reused += 1
    report.seconds = time.perf_counter() - started
    store.write_rejected(report.rejected)
    return store, report


def _one_item(store: EgemapsStore, smile, settings: EgemapsSettings, settings_hash: str,
              record: dict) -> bool | dict:
    """True computed, False reused, or the rejection ``{"id", "path", "reason"}``."""
    from foalnet.data.audio import AudioError, audio_info, load_audio

    path = str(record.get("wav"))
    try:
        key = item_key(record, settings_hash)
        if store.key_of(record["id"]) == key and store.has(record["id"]):
            return False
        rate = settings.sample_rate or audio_info(record["wav"]).sample_rate
        wave = load_audio(record["wav"], sample_rate=rate,
                          start=record.get("audio_start"), end=record.get("audio_end"))
        values = functionals(smile, wave, rate)
    except FileNotFoundError:
        return {"id": record["id"], "path": path, "reason": "file not found"}
    except (OSError, AudioError, ValueError) as err:
        return {"id": record["id"], "path": path, "reason": str(getattr(err, "reason", err))}
    store.put(record["id"], key, values)
    return True
