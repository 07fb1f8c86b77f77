"""UA / WA / macro-F1 / confusion (spec §5) with scikit-learn, and the confusion-matrix plot.

UA = mean per-class recall over the classes PRESENT in the reference labels (a class with no
test item has no recall; counting it as 0 or NaN would both be wrong), WA = overall accuracy,
macro-F1 = scikit-learn's macro F1 over the classes seen in labels or predictions
(zero_division=0). Values are fractions in [0, 1]; the confusion matrix has rows = reference,
columns = prediction, in logit order, every class present even if absent from both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
) -> dict:
    """Return ``{"ua", "wa", "macro_f1", "confusion", "n"}`` (floats in [0,1], list of lists)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(num_classes))
    confusion = confusion_matrix(y_true, y_pred, labels=labels) if len(y_true) else np.zeros(
        (num_classes, num_classes), dtype=np.int64
    )
    if len(y_true) == 0:
        return {"ua": 0.0, "wa": 0.0, "macro_f1": 0.0, "confusion": confusion.tolist(), "n": 0}
    present = sorted(set(y_true.tolist()))
    ua = recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    seen = sorted(set(present) | set(y_pred.tolist()))
    f1 = f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)
    return {
        "ua": float(ua),
        "wa": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1),
        "confusion": confusion.astype(int).tolist(),
        "n": int(len(y_true)),
    }


def metrics_from_confusion(confusion: np.ndarray) -> dict:
    """The same metrics from a (pooled) confusion matrix: rows reference, columns prediction."""
    confusion = np.asarray(confusion, dtype=np.int64)
    y_true, y_pred = [], []
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            y_true += [i] * int(count)
            y_pred += [j] * int(count)
    return classification_metrics(y_true, y_pred, confusion.shape[0])


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Save a row-normalised confusion matrix with counts as a PNG. A ``Figure`` of its own (Agg
    canvas), not pyplot: the caller's matplotlib backend and figures stay as they are."""
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = Figure(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(counts[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    color=colour, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- bootstrap intervals

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed, not the training seed: the same predictions give the same interval
BOOTSTRAP_METHOD = ("percentile bootstrap: test utterances resampled with replacement within "
                    "each fold, metric averaged over folds like the CV mean")


def resampled_ua_wa(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray,
                    num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """UA and WA of each resample (rows of ``idx`` [R, n]); UA over the classes present in it."""
    truth = y_true[idx]  # (R, n)
    hit = y_pred[idx] == truth
    recalls = []
    for c in range(num_classes):
        is_c = truth == c
        n_c = is_c.sum(axis=1)
        recalls.append(np.where(n_c > 0, (is_c & hit).sum(axis=1) / np.maximum(n_c, 1), np.nan))
    return np.nanmean(np.stack(recalls, axis=1), axis=1), hit.mean(axis=1)


def _draws(sizes: list[int], resamples: int, seed: int) -> list[np.ndarray]:
    """One [R, n] index matrix per fold, from one seeded generator (fold order fixed)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(resamples, n)) for n in sizes]


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def bootstrap_cv(folds: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> dict:
    """``{"ua": [lo, hi], "wa": [lo, hi]}``: interval of the mean over folds of UA and WA.

    ``folds``: (reference, prediction) class indices of each fold's test items. Resampling stays
    inside each fold, as the CV mean weighs every fold equally whatever its size."""
    folds = [(np.asarray(t), np.asarray(p)) for t, p in folds]
    draws = _draws([len(t) for t, _ in folds], resamples, seed)
    ua = np.zeros(resamples)
    wa = np.zeros(resamples)
    for (y_true, y_pred), idx in zip(folds, draws):
        fold_ua, fold_wa = resampled_ua_wa(y_true, y_pred, idx, num_classes)
        ua += fold_ua / len(folds)
        wa += fold_wa / len(folds)
    return {"ua": _interval(ua, level), "wa": _interval(wa, level)}


def paired_bootstrap_ua(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95) -> dict:
    """``{"ua_diff", "interval"}``: mean-over-folds UA of A minus B's, and its interval, both
    scored on the SAME resampled test utterances (paired): the interval of the difference.

    ``folds``: (reference, prediction of A, prediction of B) of each fold's common items."""
    folds = [tuple(np.asarray(x) for x in f) for f in folds]
    draws = _draws([len(f[0]) for f in folds], resamples, seed)
    diff = np.zeros(resamples)
    point = 0.0
    for (y_true, pred_a, pred_b), idx in zip(folds, draws):
        diff += (resampled_ua_wa(y_true, pred_a, idx, num_classes)[0]
                 - resampled_ua_wa(y_true, pred_b, idx, num_classes)[0]) / len(folds)
        whole = np.arange(len(y_true))[None, :]
        point += float(resampled_ua_wa(y_true, pred_a, whole, num_classes)[0][0]
                       - resampled_ua_wa(y_true, pred_b, whole, num_classes)[0][0]) / len(folds)
    return {"ua_diff": point, "interval": _interval(diff, level)}
