"""UA / WA / macro-F1 / confusion (SPEC §5) with scikit-learn, and the confusion-matrix plot.

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
    """Save a row-normalised confusion matrix with counts as a PNG (matplotlib Agg, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
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
    plt.close(fig)
    return path
