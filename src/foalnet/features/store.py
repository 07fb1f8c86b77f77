"""Per-utterance feature caches: DATA_DIR/<kind>/<slug>/ with one (T, D) array per utterance.

``VisualFeatureStore`` (DATA_DIR/visual/, float16 frame embeddings of a frozen image encoder) and
``AudioFrontendStore`` (DATA_DIR/audio_frontend/, float32 output of an audio encoder's fixed front
end) share one layout and one writer; a new kind of cache is one small subclass.

Layout of one store folder:
  meta.json      encoder, dim, crop, fps, frame_rule, dtype + the encoder's settings (flat)
  index.jsonl    one line per written item {"id", "key", "file", "frames"}; appended after the
                 array is in place, so an interrupted run loses at most the item in flight;
                 the last line of an id wins
  index.r<N>.jsonl  the same, of process N of a multi-process extraction (features/workers.py),
                 read after index.jsonl and merged into it by the main process at the end
  arrays/<key>.npy   (T, D) in the store's dtype, written to a temp name and renamed (atomic)
  rejected.jsonl the items the last extraction run could not serve {"id", "path", "reason"}

The key of an item is a hash of everything that determines its array (video path, size and
mtime, span, region, encoder name + settings, crop, frame policy), so a changed video or span
is recomputed and an array is never overwritten by a different one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable

import numpy as np

from foalnet.data.files import write_text_atomic
from foalnet.features.base import FeatureError, encoder_slug

__all__ = ["AudioFrontendStore", "FeatureError", "FeatureStore", "VisualFeatureStore", "store_slug", "feature_key"]

log = logging.getLogger(__name__)

VISUAL_DIR = "visual"
META_NAME = "meta.json"
INDEX_NAME = "index.jsonl"
SHARD_GLOB = "index.r*.jsonl"
REJECTED_NAME = "rejected.jsonl"
ARRAYS_DIR = "arrays"
# Meta fields that must agree for a folder to be reused by another run.
COMPAT_FIELDS = ("encoder", "dim", "crop", "fps", "frame_rule", "dtype", "format")


def store_slug(encoder_name: str, crop: str = "side", fps: float | None = None) -> str:
    """Folder name: the encoder slug, plus `-<crop>` unless the default crop, plus `-fps<N>`."""
    slug = encoder_slug(encoder_name)
    if crop != "side":
        slug += f"-{crop}"
    if fps is not None:
        slug += f"-fps{fps:g}"
    return slug


def feature_key(fields: dict) -> str:
    """Content hash of everything that determines one cached array."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()




def _read_store_index(root: Path) -> dict[str, dict]:
    """index.jsonl, then the shards of processes that wrote beside it (later lines win)."""
    index = _read_index(root / INDEX_NAME)
    for shard in sorted(root.glob(SHARD_GLOB)):
        index.update(_read_index(shard))
    return index


def _read_index(path: Path) -> dict[str, dict]:
    """id -> entry; a torn or corrupt line (interrupted write) is skipped with a warning."""
    index: dict[str, dict] = {}
    if not path.is_file():
        return index
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                index[entry["id"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: skipping a damaged index line", path, lineno)
    return index


class FeatureStore:
    """Cached per-utterance (T, D) arrays of one encoder and settings (one folder)."""

    SUBDIR = "features"  # DATA_DIR/<SUBDIR>/<slug>/
    KIND = "feature"  # word used in messages
    DTYPE = np.float16
    ALLOW_EMPTY = False  # may an item have T == 0 rows
    HINT = ""  # the command that fills the store, for error messages

    def __init__(self, root: str | os.PathLike, meta: dict, index: dict[str, dict],
                 shard: str | None = None):
        self.root = Path(root)
        self.meta = meta
        self._index = index
        self._index_file = self.root / (INDEX_NAME if shard is None else f"index.{shard}.jsonl")
        self._tail_checked = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def available(cls, data_dir: str | os.PathLike) -> list[str]:
        """Slugs of the store folders under DATA_DIR/<SUBDIR>/ that have a meta.json."""
        base = Path(data_dir) / cls.SUBDIR
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / META_NAME).is_file())

    @classmethod
    def open(cls, data_dir: str | os.PathLike, encoder: str | None = None) -> "FeatureStore":
        """Open DATA_DIR/<SUBDIR>/<slug>/ for reading.

        `encoder` is a folder slug (`tiny`, `tiny-face`) or an encoder name/path (slugified);
        None picks the only store there is. Raises FeatureError naming what exists.
        """
        base = Path(data_dir) / cls.SUBDIR
        found = cls.available(data_dir)
        if encoder is None:
            if not found:
                raise FeatureError(base, f"no {cls.KIND} feature store; run `{cls.HINT}`")
            if len(found) > 1:
                raise FeatureError(base, f"several {cls.KIND} feature stores ({', '.join(found)}); "
                                         "name the one to use")
            slug = found[0]
        else:
            slug = encoder if encoder in found else encoder_slug(encoder)
            if slug not in found:
                raise FeatureError(base / slug, f"no {cls.KIND} features for encoder {encoder!r} "
                                   f"(found: {', '.join(found) or 'none'}); "
                                   f"run `{cls.HINT}` first")
        root = base / slug
        return cls(root, cls._read_meta(root), _read_store_index(root))

    @classmethod
    def create(cls, data_dir: str | os.PathLike, slug: str, meta: dict,
               shard: str | None = None) -> "FeatureStore":
        """Open (or start) a store for writing; refuse a folder made with other settings.

        ``shard``: this process's index file is ``index.<shard>.jsonl`` (one of several writers)."""
        root = Path(data_dir) / cls.SUBDIR / slug
        if (root / META_NAME).is_file():
            old = cls._read_meta(root)
            diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta)
                    if old.get(k) != meta.get(k)}
            if diff:
                pretty = "; ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in sorted(diff.items()))
                raise FeatureError(root / META_NAME, f"holds features made differently ({pretty}); "
                                   "remove the folder to rebuild it")
        (root / ARRAYS_DIR).mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / META_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return cls(root, meta, _read_store_index(root), shard)

    @classmethod
    def _read_meta(cls, root: Path) -> dict:
        path = root / META_NAME
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise FeatureError(path, f"missing meta.json (not a {cls.KIND} feature store)") from err
        except (OSError, json.JSONDecodeError) as err:
            raise FeatureError(path, f"unreadable meta.json: {err}") from err
        if not isinstance(meta, dict) or "dim" not in meta:
            raise FeatureError(path, "meta.json lacks the feature dimension 'dim'")
        return meta

    # ------------------------------------------------------------------ reading
    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def slug(self) -> str:
        return self.root.name

    @property
    def ids(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, utt_id: str) -> bool:
        return self.has(utt_id)

    def key_of(self, utt_id: str) -> str | None:
        entry = self._index.get(utt_id)
        return entry["key"] if entry else None

    def path_of(self, utt_id: str) -> Path:
        entry = self._index.get(utt_id)
        if entry is None:
            raise FeatureError(self.root / INDEX_NAME, f"no {self.KIND} features for {utt_id!r}")
        return self.root / entry["file"]

    def has(self, utt_id: str) -> bool:
        """An entry exists and its array file is on disk."""
        entry = self._index.get(utt_id)
        return entry is not None and (self.root / entry["file"]).is_file()

    def load(self, utt_id: str) -> np.ndarray:
        """(T, D) in the store's dtype, memory-mapped; FeatureError names the file and the problem."""
        path = self.path_of(utt_id)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as err:
            raise FeatureError(path, f"missing feature file for {utt_id!r}") from err
        except (OSError, ValueError, EOFError) as err:
            raise FeatureError(path, f"unreadable feature file for {utt_id!r}: {err}") from err
        if array.dtype != self.DTYPE or array.ndim != 2 or array.shape[1] != self.dim:
            raise FeatureError(path, f"expected {np.dtype(self.DTYPE).name} [T, {self.dim}], found "
                                     f"{array.dtype} {list(array.shape)}")
        if array.shape[0] == 0 and not self.ALLOW_EMPTY:
            raise FeatureError(path, f"no frames for {utt_id!r}")
        return array

    # ------------------------------------------------------------------ writing
    def put(self, utt_id: str, key: str, features: np.ndarray) -> Path:
        """Store (T, D) features of one item: array first (atomic), then its index line."""
        T, D = features.shape
        if D != self.dim or (T == 0 and not self.ALLOW_EMPTY):
            raise ValueError(f"{utt_id}: features of shape {features.shape}, store dim {self.dim}")
        rel = f"{ARRAYS_DIR}/{key}.npy"
        path = self.root / rel
        if not path.is_file():
            tmp = path.with_name(f".{key}.{os.getpid()}.tmp.npy")
            np.save(tmp, np.ascontiguousarray(features, dtype=self.DTYPE))
            os.replace(tmp, path)
        entry = {"id": utt_id, "key": key, "file": rel, "frames": int(T)}
        line = json.dumps(entry) + "\n"
        if not self._tail_checked:  # a torn last line (killed writer) must not swallow this one
            self._tail_checked = True
            if self._index_file.is_file() and self._index_file.stat().st_size:
                with open(self._index_file, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        line = "\n" + line
        with open(self._index_file, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
        self._index[utt_id] = entry
        return path

    def reload(self) -> None:
        """Read the index again (after another process merged or wrote it)."""
        self._index = _read_store_index(self.root)

    def merge_index(self) -> None:
        """Fold the per-process shards into index.jsonl (one line per id), then remove them.

        Main process only, while no other process writes (start and end of an extraction)."""
        shards = sorted(self.root.glob(SHARD_GLOB))
        if not shards:
            return
        self._index = _read_store_index(self.root)
        write_text_atomic(self.root / INDEX_NAME, "".join(json.dumps(e) + "\n" for e in self._index.values()))
        for shard in shards:
            shard.unlink(missing_ok=True)

    def write_rejected(self, rejected: Iterable[dict]) -> Path:
        """The failures of the latest run (replaces the previous run's list)."""
        path = self.root / REJECTED_NAME
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rejected))
        return path


class VisualFeatureStore(FeatureStore):
    """Frame embeddings of a frozen image encoder (``foalnet extract-visual``), float16."""

    SUBDIR = VISUAL_DIR
    KIND = "visual"
    HINT = "foalnet extract-visual"


class AudioFrontendStore(FeatureStore):
    """Output of an audio encoder's fixed front end (frozen CNN, DSP features), float32 so that
    training from it equals training from the waveform; an utterance too short for one frame
    is stored with T = 0 (the model masks it, as it does from the waveform)."""

    SUBDIR = "audio_frontend"
    KIND = "audio front-end"
    DTYPE = np.float32
    ALLOW_EMPTY = True
    HINT = "foalnet extract-audio"


@dataclass
class CacheReport:
    """What one cache fill did; ``rejected`` = ``{"id", "path", "reason"}`` of every item it could
    not serve. Subclasses name their kind (``KIND``) and may add to the summary."""

    KIND: ClassVar[str] = "cache"
    slug: str
    done: int = 0
    reused: int = 0
    seconds: float = 0.0
    rejected: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.rejected)

    def summary(self) -> str:
        return (f"{self.KIND} {self.slug}: done {self.done}, reused {self.reused}, "
                f"failed {self.failed} in {self.seconds:.1f} s")
