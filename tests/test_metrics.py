"""UA / WA / macro-F1 / confusion pinned on hand-computed examples (spec §5)."""
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
    # 8 items of class 0 all right, 2 of class 1 all wrong: WA 0.8, UA 0.5 (spec §3: never swap them)
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


def test_confusion_png_written_without_touching_matplotlibs_global_state(tmp_path):
    import matplotlib

    with matplotlib.rc_context({"backend": "svg"}):  # a caller's own backend choice
        path = plot_confusion([[2, 1], [0, 0]], ["neu", "hap"], tmp_path / "c.png", "title")
        assert matplotlib.rcParams["backend"] == "svg"  # matplotlib.use("Agg") would have changed it
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- bootstrap intervals


def test_resampled_ua_wa_of_hand_picked_resamples():
    from foalnet.train.metrics import resampled_ua_wa

    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])  # item 1 wrong
    idx = np.array([[0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 2, 2], [2, 3, 2, 3]])
    ua, wa = resampled_ua_wa(y_true, y_pred, idx, 3)
    # [0 ok, 1 wrong | 2, 3 ok]: class 0 recall 1/2, class 1 recall 1 -> UA 0.75, WA 3/4;
    # only item 0: UA 1 (class 0 alone present); items 1,1,2,2: recalls 0 and 1; only class 1: 1
    assert ua.tolist() == [0.75, 1.0, 0.5, 1.0] and wa.tolist() == [0.75, 1.0, 0.5, 1.0]


def test_bootstrap_resamples_within_folds():
    """Fold A all right, fold B all wrong: the mean over folds is 0.5 in EVERY resample when each
    fold is resampled on its own (pooled resampling would spread it), so the interval is [.5, .5]."""
    from foalnet.train.metrics import bootstrap_cv

    fold_a = (np.array([0, 1, 0, 1, 0]), np.array([0, 1, 0, 1, 0]))
    fold_b = (np.array([0, 1, 1]), np.array([1, 0, 0]))
    ci = bootstrap_cv([fold_a, fold_b], 2, resamples=200, seed=3)
    assert ci == {"ua": [0.5, 0.5], "wa": [0.5, 0.5]}


def test_bootstrap_interval_of_one_right_one_wrong_is_zero_to_one_and_seeded():
    """Two items, one right: a resample's WA is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4, so the
    2.5 and 97.5 percentiles are 0 and 1 (UA the same: a one-class resample scores 0 or 1)."""
    from foalnet.train.metrics import bootstrap_cv

    ci = bootstrap_cv([(np.array([0, 1]), np.array([0, 0]))], 2, resamples=1000, seed=0)
    assert ci == {"ua": [0.0, 1.0], "wa": [0.0, 1.0]}
    spread = [(np.arange(40) % 4, np.where(np.arange(40) % 3 == 0, 0, np.arange(40) % 4))]
    assert bootstrap_cv(spread, 4, seed=5) == bootstrap_cv(spread, 4, seed=5)
    assert bootstrap_cv(spread, 4, seed=5) != bootstrap_cv(spread, 4, seed=6)


def test_paired_ua_difference_and_its_interval():
    from foalnet.train.metrics import paired_bootstrap_ua

    y_true = np.array([0, 1] * 10)
    right = y_true.copy()
    half = np.zeros(20, dtype=int)  # every class-1 item wrong: UA 0.5 whenever both classes drawn
    same = paired_bootstrap_ua([(y_true, right, right)], 2, seed=1)
    assert same == {"ua_diff": 0.0, "interval": [0.0, 0.0]}
    # A - B = 1 - 0.5 on all but one-class resamples (chance 2 / 2**20): interval [0.5, 0.5]
    better = paired_bootstrap_ua([(y_true, right, half)], 2, seed=1)
    assert better == {"ua_diff": 0.5, "interval": [0.5, 0.5]}
    # two folds: the difference is the mean over folds of each fold's difference
    two = paired_bootstrap_ua([(y_true, right, half), (y_true, right, right)], 2, seed=1)
    assert two == {"ua_diff": 0.25, "interval": [0.25, 0.25]}
