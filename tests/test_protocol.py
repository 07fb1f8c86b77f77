"""Protocol: class sets, speaker-disjoint folds and the dev split drawn from training folds only."""
from __future__ import annotations

import pytest

from foalnet.data.protocol import (FoldSplit, folds_of, labels_of, map_label, speaker_folds,
                                   split_fold)


def _records() -> list[dict]:
    """IEMOCAP-like: 5 sessions x 2 speakers, 3 utterances each."""
    return [{"id": f"Ses0{s}{g}_{i}", "label": "neu", "speaker": f"Ses0{s}{g}", "fold": s}
            for s in range(1, 6) for g in "FM" for i in range(3)]


def test_class_sets_and_exc_merge():
    assert [map_label(c, "4") for c in ("neu", "hap", "exc", "sad", "ang")] == \
        ["neu", "hap", "hap", "sad", "ang"]
    assert map_label("exc", "4-no-exc") is None and map_label("hap", "4-no-exc") == "hap"
    for dropped in ("fru", "sur", "xxx", "oth", "fea", "dis"):
        assert map_label(dropped, "4") is None
    assert labels_of("4") == labels_of("4-no-exc") == ["neu", "hap", "sad", "ang"]
    with pytest.raises(ValueError, match="unknown class set"):
        map_label("neu", "7")


def test_speaker_folds_balanced_by_hand():
    # largest first into the smallest fold: a10->1 (10,0), b8->2 (10,8), c5->2 (10,13),
    # d4->1 (14,13), e2->2 (14,15)
    folds = speaker_folds({"a": 10, "b": 8, "c": 5, "d": 4, "e": 2}, 2)
    assert folds == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 2}
    with pytest.raises(ValueError, match="cannot make 5 speaker-disjoint folds"):
        speaker_folds({"a": 1, "b": 1}, 5)


def test_split_fold_dev_is_one_training_speaker():
    records = _records()
    split = split_fold(records, test_fold=3, dev_speakers=1, seed=7)
    assert isinstance(split, FoldSplit)
    assert {r["fold"] for r in split.test} == {3} and len(split.test) == 6
    dev_speakers = {r["speaker"] for r in split.dev}
    train_speakers = {r["speaker"] for r in split.train}
    assert len(dev_speakers) == 1 and len(split.dev) == 3
    assert not dev_speakers & train_speakers
    assert not dev_speakers & {"Ses03F", "Ses03M"}  # never the test session
    assert len(split.train) + len(split.dev) + len(split.test) == len(records)
    assert folds_of(records) == [1, 2, 3, 4, 5]


def test_split_fold_deterministic_in_seed():
    records = _records()
    draws = {s: {r["speaker"] for r in split_fold(records, 1, seed=s).dev} for s in range(12)}
    assert draws[5] == {r["speaker"] for r in split_fold(records, 1, seed=5).dev}
    assert len({frozenset(d) for d in draws.values()}) > 1  # the seed matters
    two = split_fold(records, 1, dev_speakers=2, seed=0)
    assert len({r["speaker"] for r in two.dev}) == 2


def test_split_fold_errors_and_fallbacks():
    records = _records()
    with pytest.raises(ValueError, match="no records in test fold 9"):
        split_fold(records, 9)
    with pytest.raises(ValueError, match="only 8 speakers"):
        split_fold(records, 1, dev_speakers=8)
    assert split_fold(records, 1, dev_speakers=0).dev == []
    anonymous = [dict(r, speaker=None) for r in records]
    split = split_fold(anonymous, 2, seed=0, dev_fraction=0.25)
    assert len(split.dev) == 6 and len(split.train) == 18  # 25 % of 24 training utterances
