"""UA / WA / macro-F1 / confusion pinned on hand-computed examples (SPEC §5)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from foalnet.train.metrics import classification_metrics, metrics_from_confusion, plot_confusion

# 4 classes; per-class recall 2/3, 1/2, 3/4, 1/1; 7 of 10 correct.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
Y_PRED = [0, 0, 1, 1, 0, 2, 2, 3, 2, 3]


def test_metrics_hand_computed():
    m = classification_metrics(Y_TRUE, Y_PRED, 4)
    assert m["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]]
    assert m["ua"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 1) / 4)  # 0.7292
    assert m["wa"] == pytest.approx(0.7)
    # F1 per class: P/R = 2/3,2/3 | 1/2,1/2 | 1,3/4 | 1/2,1
    f1 = [2 / 3, 1 / 2, 2 * 0.75 / 1.75, 2 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 4)
    assert m["n"] == 10


def test_ua_differs_from_wa_on_imbalanced_labels():
    # 8 items of class 0 all right, 2 of class 1 all wrong: WA 0.8, UA 0.5 (SPEC §3: never swap them)
    m = classification_metrics([0] * 8 + [1] * 2, [0] * 10, 2)
    assert m["wa"] == pytest.approx(0.8)
    assert m["ua"] == pytest.approx(0.5)


def test_absent_class_gives_no_nan():
    # classes 2 and 3 never occur in the reference; class 3 is predicted once
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 3], 4)
    assert m["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["ua"] == pytest.approx(0.5)  # mean recall over the 2 present classes
    assert m["wa"] == pytest.approx(0.5)
    # F1 over classes seen in labels or predictions {0, 1, 3}: 2/3, 1/2, 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert all(math.isfinite(m[k]) for k in ("ua", "wa", "macro_f1"))


def test_empty_input_is_zero_not_nan():
    m = classification_metrics([], [], 3)
    assert m["n"] == 0 and m["ua"] == 0.0 and m["confusion"] == [[0] * 3] * 3


def test_metrics_from_pooled_confusion_match_item_level():
    direct = classification_metrics(Y_TRUE, Y_PRED, 4)
    pooled = metrics_from_confusion(np.asarray(direct["confusion"]))
    assert pooled["confusion"] == direct["confusion"]
    for key in ("ua", "wa", "macro_f1"):
        assert pooled[key] == pytest.approx(direct[key])


def test_confusion_png_written(tmp_path):
    path = plot_confusion([[2, 1], [0, 0]], ["neu", "hap"], tmp_path / "c.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
