"""The evaluation protocol, kept apart from parsing: class sets, folds and the dev split.

* class sets: "4" (neu, hap+exc -> hap, sad, ang; the default) and "4-no-exc" (exc dropped);
* folds: IEMOCAP leave-one-session-out (fold = session); corpora without sessions get K
  speaker-disjoint folds balanced by utterance count;
* ``split_fold``: test = one fold; dev = whole speakers drawn from the training folds only, so
  model selection never sees the test session (spec §3) and dev is speaker-disjoint from train;
* other corpora (CREMA-D, RAVDESS, MSP-IMPROV, MELD): class set "all" (the corpus's own
  emotions) or "4" (neu/hap/sad/ang only, the rest dropped, never merged), logit order
  ``corpus_labels``; records carrying an official ``partition`` (MELD train/dev/test) have one
  test fold, the test partition, and the official dev partition as dev.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

# code -> class name; codes not in the mapping are dropped (not an error: the protocol).
CLASS_SETS: dict[str, dict[str, str]] = {
    "4": {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang"},
    "4-no-exc": {"neu": "neu", "hap": "hap", "sad": "sad", "ang": "ang"},
}
DEFAULT_CLASSES = "4"
# Logit order of the IEMOCAP class sets.
IEMOCAP_LABELS = ["neu", "hap", "sad", "ang"]


def class_map(classes: str) -> dict[str, str]:
    if classes not in CLASS_SETS:
        raise UsageError(f"unknown class set {classes!r}; choose from {sorted(CLASS_SETS)}")
    return CLASS_SETS[classes]


def map_label(code: str, classes: str = DEFAULT_CLASSES) -> str | None:
    """The class of a raw emotion code under ``classes``, or None when the code is dropped."""
    return class_map(classes).get(code)


def labels_of(classes: str) -> list[str]:
    """Logit order of a class set."""
    class_map(classes)
    return list(IEMOCAP_LABELS)


# Class sets of the corpora whose labels have no IEMOCAP codes: their own emotions, or the four.
OWN_CLASSES = "all"
FOUR_CLASSES = "4"
CORPUS_CLASS_SETS = (OWN_CLASSES, FOUR_CLASSES)
# An official partition (MELD): the values of a record's ``partition`` field.
PARTITIONS = ("train", "dev", "test")


def corpus_labels(names: list[str], classes: str) -> list[str]:
    """Logit order of a corpus's class set: the four shared classes first, in IEMOCAP's order
    (so models line up across corpora), then the corpus's other emotions in its own order."""
    if classes not in CORPUS_CLASS_SETS:
        raise UsageError(f"unknown class set {classes!r}; choose from {list(CORPUS_CLASS_SETS)}")
    four = [c for c in IEMOCAP_LABELS if c in names]
    return four if classes == FOUR_CLASSES else four + [n for n in names if n not in four]


def block_speaker_folds(speakers: list[str], k: int) -> dict[str, int]:
    """K folds of consecutive speakers in sorted order (RAVDESS: actors 1-4, 5-8, ... for K=6,
    each fold two male and two female actors, the grouping its usual protocol uses)."""
    ordered = sorted(set(speakers))
    if k < 2 or len(ordered) < k:
        raise UsageError(f"{len(ordered)} speakers cannot make {k} speaker-disjoint folds")
    return {spk: i * k // len(ordered) + 1 for i, spk in enumerate(ordered)}


# what a run and a CV summary say about the protocol of a corpus with an official partition
OFFICIAL_SPLIT_PROTOCOL = ("the corpus's official train/dev/test partition (best epoch selected on "
                           "its dev partition; test untouched during selection); NOT "
                           "speaker-independent: its speakers recur across the partitions")


def has_official_split(records: list[dict]) -> bool:
    """The records carry the corpus's own train/dev/test partition (MELD), not speaker folds."""
    return any(r.get("partition") is not None for r in records)


def folds_of(records: list[dict]) -> list[int]:
    """The test folds, sorted (IEMOCAP: sessions 1..5). With an official partition (MELD) only
    the test partition's fold: testing on its train or dev split is not its protocol."""
    if has_official_split(records):
        return sorted({int(r["fold"]) for r in records if r.get("partition") == "test"})
    return sorted({int(r["fold"]) for r in records})


def speaker_folds(speaker_counts: dict[str, int], k: int) -> dict[str, int]:
    """Assign whole speakers to K folds (1..K), balancing utterance counts (greedy, deterministic).

    Largest speaker first into the currently smallest fold (ties: lowest fold index, then
    speaker name), the classic LPT heuristic.
    """
    if k < 2:
        raise UsageError(f"need at least 2 folds, got {k}")
    if len(speaker_counts) < k:
        raise UsageError(f"{len(speaker_counts)} speakers cannot make {k} speaker-disjoint folds")
    sizes = [0] * k
    out: dict[str, int] = {}
    for spk, n in sorted(speaker_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        fold = min(range(k), key=lambda i: (sizes[i], i))
        out[spk] = fold + 1
        sizes[fold] += n
    return out


@dataclass(frozen=True)
class FoldSplit:
    """Records of one cross-validation fold: train and dev from the training folds, test held out."""

    train: list[dict]
    dev: list[dict]
    test: list[dict]


def _draw_dev_speakers(train_pool: list[dict], dev_speakers: int, seed: int) -> set[str]:
    speakers = sorted({r["speaker"] for r in train_pool})
    if dev_speakers >= len(speakers):
        raise UsageError(f"cannot hold out {dev_speakers} dev speaker(s): the training folds "
                         f"have only {len(speakers)} speakers")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(speakers), size=dev_speakers, replace=False)
    return {speakers[i] for i in sorted(chosen)}


SPEED_TAG = "@speed"  # id and speaker suffix of a speed-perturbed copy


def speed_copies(records: list[dict], factors: list[float]) -> list[dict]:
    """One copy of every record per speed factor (``data.speed_perturb``): id and speaker get
    ``@speed<f>`` (a copy is its own speaker for per-speaker normalisation: its voice is another
    one), ``speed`` = f, ``copy_of`` = the original's id."""
    copies = []
    for factor in factors:
        tag = f"{SPEED_TAG}{float(factor):g}"
        for record in records:
            speaker = record.get("speaker")
            copies.append({**record, "id": f"{record['id']}{tag}", "speed": float(factor), "copy_of": record["id"],
                           "speaker": None if speaker is None else f"{speaker}{tag}"})
    return copies


def split_fold(records: list[dict], test_fold: int, dev_speakers: int = 1,
               seed: int = 1234, dev_fraction: float = 0.1) -> FoldSplit:
    """Split ``records`` for one fold: test = ``fold == test_fold``; dev speaker(s) drawn from the rest.

    Deterministic in ``seed``. When the training records carry no speaker ids (e.g. a plain
    scp list) a seeded ``dev_fraction`` of training utterances is used instead, with a warning.
    ``dev_speakers=0`` gives an empty dev set.
    """
    test = [r for r in records if int(r["fold"]) == int(test_fold)]
    if not test:
        raise UsageError(f"no records in test fold {test_fold}; folds are {folds_of(records)}")
    pool = [r for r in records if int(r["fold"]) != int(test_fold)]
    if has_official_split(records):
        return _official_split(test, pool, test_fold, dev_speakers)
    if dev_speakers <= 0:
        return FoldSplit(train=pool, dev=[], test=test)
    if any(r.get("speaker") is None for r in pool):
        log.warning("records without speaker ids: dev = random %.0f%% of training utterances",
                    100 * dev_fraction)
        rng = np.random.default_rng(seed)
        dev_idx = set(rng.permutation(len(pool))[: max(1, int(dev_fraction * len(pool)))].tolist())
        return FoldSplit(train=[r for i, r in enumerate(pool) if i not in dev_idx],
                         dev=[r for i, r in enumerate(pool) if i in dev_idx], test=test)
    dev_set = _draw_dev_speakers(pool, dev_speakers, seed)
    return FoldSplit(train=[r for r in pool if r["speaker"] not in dev_set],
                     dev=[r for r in pool if r["speaker"] in dev_set], test=test)


def _official_split(test: list[dict], pool: list[dict], test_fold: int,
                    dev_speakers: int) -> FoldSplit:
    """The corpus's own train/dev/test (MELD): dev = the dev partition, not drawn speakers
    (its speakers recur across partitions: not speaker-independent, and said so)."""
    if any(r.get("partition") != "test" for r in test):
        raise UsageError(f"fold {test_fold} is not the official test partition; this corpus "
                         "has one test fold (see prepare.json)")
    dev = [r for r in pool if r.get("partition") == "dev"] if dev_speakers > 0 else []
    train = [r for r in pool if r.get("partition") == "train" or (r.get("partition") == "dev"
                                                                   and not dev)]
    log.info("official partition: train %d, dev %d, test %d (not speaker-independent)",
             len(train), len(dev), len(test))
    return FoldSplit(train=train, dev=dev, test=test)


def label_counts(records: list[dict], labels: list[str]) -> dict[str, int]:
    counts = Counter(r["label"] for r in records)
    return {lab: counts.get(lab, 0) for lab in labels}
