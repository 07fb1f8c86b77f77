"""The classical baseline: eGeMAPS functionals + standardised, class-balanced RBF SVM.

Why: on a few hundred real clips a deep model can lose to a 2013-style baseline; every table
(``foalnet svm``, the ``egemaps_svm`` row of ``foalnet ablate``) should answer "is the deep model
better than the classical baseline on my data?" on the SAME manifest, folds and metrics.

Protocol per test fold K (``protocol.split_fold(records, K, dev_speakers=0)``: test = fold K,
train = every other fold): C and gamma are chosen by a speaker-grouped inner cross-validation on
the training speakers only (``inner_folds`` groups, or one per speaker when fewer; UA = mean
recall, ties to the smaller C, then the gamma nearest 1/n_features), the SVM is refit on all
training items and predicts the test fold once. The test fold is never seen while choosing.
``speaker_norm`` z-normalises each speaker's features with that speaker's own mean and std
(no labels used; test speakers use their own test items, as a deployed system would with
enrolment audio): it removes voice level and pitch range, the largest non-emotional variance.

Outputs = those of ``cv`` (its writers): ``DIR/fold<K>/{summary.json, predictions.csv,
rejected.jsonl, confusion.png}`` and ``DIR/{summary.json, report.md, confusion.png,
rejected.jsonl}`` (UA/WA/F1 mean +- std, bootstrap CI, pooled confusion) plus ``svm``: the
settings and each fold's chosen C / gamma and inner UA. ``p_<label>`` in predictions.csv are
the softmax of the one-vs-rest decision values (ranking scores, not calibrated probabilities;
their argmax is the SVM's prediction).
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from foalnet.data.files import write_text_atomic
from foalnet.features.egemaps import EgemapsSettings, EgemapsStore, build_egemaps_cache
from foalnet.train.metrics import classification_metrics, plot_confusion
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

SVM_ROW = "egemaps_svm"  # the ablation row (not "baseline": that is the paper's fusion row)


@dataclass(frozen=True)
class SvmSettings:
    """The SVM recipe; the grid is searched on the training speakers of each fold."""

    speaker_norm: bool = False  # z-normalise each speaker's features with its own statistics
    c_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # SVM C candidates
    gamma_grid: tuple[float, ...] = (0.25, 1.0, 4.0)  # RBF gamma as multiples of 1 / n_features
    inner_folds: int = 5  # speaker-grouped inner CV folds (fewer speakers: one per speaker)

    def __post_init__(self) -> None:
        problems = []
        if not self.c_grid or any(not c > 0 for c in self.c_grid):
            problems.append(f"c_grid={list(self.c_grid)} must be positive values")
        if not self.gamma_grid or any(not g > 0 for g in self.gamma_grid):
            problems.append(f"gamma_grid={list(self.gamma_grid)} must be positive values")
        if self.inner_folds < 2:
            problems.append(f"inner_folds={self.inner_folds} must be >= 2")
        if problems:
            raise UsageError("invalid svm settings: " + "; ".join(problems))


# ----------------------------------------------------------------------------- features


def load_features(store: EgemapsStore, records: list[dict]) -> tuple[np.ndarray, list[dict], dict]:
    """(X [N, D] float64, the records that have features, {id: reason} of those that do not)."""
    from foalnet.features.base import FeatureError

    rows, kept, missing = [], [], {}
    for record in records:
        try:
            rows.append(np.asarray(store.load(record["id"]), dtype=np.float64)[0])
            kept.append(record)
        except FeatureError as err:
            missing[record["id"]] = f"egemaps: {err.path}: {err.reason}"
    X = np.stack(rows) if rows else np.zeros((0, store.dim))
    return X, kept, missing


def speaker_normalise(X: np.ndarray, speakers: list[str]) -> np.ndarray:
    """Each speaker's rows minus its mean, over its std (std 0: left centred, not divided)."""
    out = np.empty_like(X)
    speakers_arr = np.asarray(speakers, dtype=object)
    for spk in dict.fromkeys(speakers):
        rows = speakers_arr == spk
        mean, std = X[rows].mean(axis=0), X[rows].std(axis=0)
        out[rows] = (X[rows] - mean) / np.where(std > 1e-12, std, 1.0)
    return out


# ----------------------------------------------------------------------------- one SVM


def make_classifier(c: float, gamma_factor: float, dim: int):
    """StandardScaler + class-balanced RBF SVC (gamma = factor / dim: ``scale`` on z-scores)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(kernel="rbf", C=c, gamma=gamma_factor / dim,
                                               class_weight="balanced"))


def class_scores(clf, X: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, C] softmax of the one-vs-rest decision values, in logit order (classes the SVM never
    saw get 0); argmax = ``clf.predict``."""
    classes = clf.classes_
    decision = clf.decision_function(X)
    if len(classes) == 2:  # binary SVC: one column, positive = classes[1]
        decision = np.stack([-decision, decision], axis=1)
    full = np.full((len(X), num_classes), -np.inf)
    full[:, classes] = decision
    full = np.exp(full - full.max(axis=1, keepdims=True))
    return full / full.sum(axis=1, keepdims=True)


def inner_groups(speakers: list[str], folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Speaker-grouped (train, validation) index pairs; [] with fewer than 2 speakers."""
    from sklearn.model_selection import GroupKFold

    n_speakers = len(set(speakers))
    if n_speakers < 2:
        return []
    splitter = GroupKFold(n_splits=min(folds, n_speakers))
    return list(splitter.split(np.zeros(len(speakers)), groups=speakers))


def select_params(X: np.ndarray, y: np.ndarray, speakers: list[str], settings: SvmSettings,
                  num_classes: int) -> dict:
    """``{"C", "gamma_factor", "inner_ua", "grid"}`` from the inner CV on these items only.

    One training speaker: nothing to validate on, so C = 1 and gamma = 1 / n_features
    (``inner_ua`` None)."""
    splits = inner_groups(speakers, settings.inner_folds)
    if not splits:
        return {"C": 1.0, "gamma_factor": 1.0, "inner_ua": None, "grid": []}
    grid = []
    for c in sorted(settings.c_grid):
        for g in sorted(settings.gamma_grid, key=lambda v: (abs(np.log(v)), v)):
            grid.append({"C": c, "gamma_factor": g,
                         "inner_ua": _inner_ua(X, y, splits, c, g, num_classes)})
    best = max(grid, key=lambda row: row["inner_ua"])  # first of the ties: smaller C, gamma ~ 1
    return {**best, "grid": grid}


def _inner_ua(X, y, splits, c: float, gamma_factor: float, num_classes: int) -> float:
    """Mean UA over the inner validation speakers' groups (splits whose training part holds a
    single class cannot fit an SVM and are left out)."""
    scores = []
    for train_idx, val_idx in splits:
        if len(set(y[train_idx].tolist())) < 2:
            continue
        clf = make_classifier(c, gamma_factor, X.shape[1]).fit(X[train_idx], y[train_idx])
        predicted = clf.predict(X[val_idx])
        scores.append(classification_metrics(y[val_idx], predicted, num_classes)["ua"])
    return float(np.mean(scores)) if scores else float("-inf")


# ----------------------------------------------------------------------------- cross-validation


def run_svm_cv(data_dir: str | Path, out_dir: str | Path, folds: list[int] | None = None,
               settings: SvmSettings = SvmSettings(),
               features: EgemapsSettings = EgemapsSettings(), title: str = "",
               progress: bool = True) -> dict:
    """Extract (cached) features, run every fold, write the CV outputs; return the summary."""
    from foalnet.data.manifest import read_manifest, read_prepare_meta
    from foalnet.data.protocol import folds_of

    records = read_manifest(data_dir)
    labels = list(read_prepare_meta(data_dir)["labels"])
    available = folds_of(records)
    folds = folds or available
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise UsageError(f"folds {unknown} are not in the manifest (folds: {available})")
    store, report = build_egemaps_cache(data_dir, records, features, progress=progress)
    log.info("%s", report.summary())
    failed = {r["id"]: f"egemaps: {r['path']}: {r['reason']}" for r in report.rejected}
    X, kept, missing = load_features(store, [r for r in records if r["id"] not in failed])
    failed.update(missing)
    if settings.speaker_norm and len(kept):
        X = speaker_normalise(X, [str(r.get("speaker")) for r in kept])
    out_dir = Path(out_dir)
    per_fold = {fold: run_fold(X, kept, records, failed, labels, fold, settings,
                               out_dir / f"fold{fold}") for fold in folds}
    return write_summary(per_fold, out_dir, data_dir, settings, features, store.slug,
                         title or "eGeMAPS + RBF-SVM baseline")


def run_fold(X: np.ndarray, kept: list[dict], records: list[dict], failed: dict[str, str],
             labels: list[str], fold: int, settings: SvmSettings, fold_dir: Path) -> dict:
    """Choose C/gamma on the training folds, fit, predict fold ``fold``; write its folder."""
    from foalnet.data.protocol import split_fold

    split = split_fold(records, fold, dev_speakers=0)
    row_of = {r["id"]: i for i, r in enumerate(kept)}
    train_ids = [r["id"] for r in split.train if r["id"] in row_of]
    test = [r for r in split.test if r["id"] in row_of]
    index = {name: i for i, name in enumerate(labels)}
    tr = np.array([row_of[i] for i in train_ids], dtype=np.int64)
    y_train = np.array([index[kept[i]["label"]] for i in tr], dtype=np.int64)
    if len(set(y_train.tolist())) < 2:
        raise UsageError(f"fold {fold}: the training folds hold {len(set(y_train.tolist()))} "
                         "class(es) with features; an SVM needs at least 2")
    chosen = select_params(X[tr], y_train, [str(kept[i].get("speaker")) for i in tr], settings,
                           len(labels))
    clf = make_classifier(chosen["C"], chosen["gamma_factor"], X.shape[1]).fit(X[tr], y_train)
    te = np.array([row_of[r["id"]] for r in test], dtype=np.int64)
    scores = class_scores(clf, X[te], len(labels)) if len(te) else np.zeros((0, len(labels)))
    y_test = np.array([index[r["label"]] for r in test], dtype=np.int64)
    predicted = scores.argmax(axis=1) if len(te) else y_test
    metrics = classification_metrics(y_test, predicted, len(labels))
    fold_failed = {r["id"]: failed[r["id"]] for r in split.train + split.test if r["id"] in failed}
    summary = {"test": metrics, "labels": labels, "fold": fold, "selected_epoch": None,
               "svm": {k: v for k, v in chosen.items() if k != "grid"},
               "inner_grid": chosen["grid"],
               "train_items": len(tr), "test_items": len(te), "skipped_items": len(fold_failed),
               "method": "egemaps_svm"}
    write_fold(fold_dir, summary, test, scores, labels, fold_failed, records)
    return summary


def write_fold(fold_dir: Path, summary: dict, test: list[dict], scores: np.ndarray,
               labels: list[str], failed: dict[str, str], records: list[dict]) -> None:
    """predictions.csv / rejected.jsonl / confusion.png / summary.json (last) of one fold."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", "prediction", *[f"p_{name}" for name in labels]])
    for record, row in zip(test, scores):
        writer.writerow([record["id"], record["label"], labels[int(np.argmax(row))],
                         *[f"{p:.6f}" for p in row]])
    write_text_atomic(fold_dir / "predictions.csv", buffer.getvalue())
    wav_of = {r["id"]: r.get("wav") for r in records}
    write_text_atomic(fold_dir / "rejected.jsonl", "".join(
        json.dumps({"id": i, "path": wav_of.get(i), "reason": reason}) + "\n"
        for i, reason in sorted(failed.items())))
    plot_confusion(summary["test"]["confusion"], labels, fold_dir / "confusion.png",
                   f"eGeMAPS SVM fold {summary['fold']} test UA {summary['test']['ua']:.3f}")
    write_text_atomic(fold_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def write_summary(per_fold: dict[int, dict], out_dir: Path, data_dir: str | Path,
                  settings: SvmSettings, features: EgemapsSettings, slug: str, title: str) -> dict:
    """The CV summary and report through cv's own writers, plus the chosen parameters."""
    from foalnet.train.cv import (add_intervals, fold_predictions, rejected_rows, summarize,
                                  write_cv_outputs)

    folds = sorted(per_fold)
    view = SimpleNamespace(  # the fields of ExperimentConfig that cv.summarize reads
        data=SimpleNamespace(select_on_test=False, dev_speakers=0, speed_perturb=[], data_dir=str(Path(data_dir).resolve())),
        model=SimpleNamespace(modality="audio", use_avel=False, use_mem=False, audio_options=None))
    summary = summarize(per_fold, view, rejected_rows(out_dir, folds))
    summary["protocol"] = (f"leave-one-fold-out; SVM C and gamma chosen by a speaker-grouped "
                           f"inner CV ({settings.inner_folds} groups) on the training folds only; "
                           "test fold untouched during selection")
    summary["method"] = SVM_ROW
    summary["svm"] = {"settings": {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in asdict(settings).items()},
                      "features": {"store": slug, **asdict(features)},
                      "per_fold": [per_fold[k]["svm"] for k in folds]}
    add_intervals(summary, fold_predictions(out_dir, folds, summary["labels"]))
    write_cv_outputs(out_dir, summary, title, extra_markdown=params_markdown(summary))
    return summary


def params_markdown(summary: dict) -> str:
    """The per-fold chosen C / gamma (the report's 'selected epoch' column is empty for an SVM)."""
    s = summary["svm"]["settings"]
    lines = ["", "## SVM", "", f"Features: {summary['svm']['features']['store']}; speaker "
             f"normalisation: {'on' if s['speaker_norm'] else 'off'}; grid C {s['c_grid']}, "
             f"gamma {s['gamma_grid']} / n_features.", "",
             "| fold | C | gamma × n_features | inner UA % |", "|---|---|---|---|"]
    for fold, chosen in zip(summary["folds"], summary["svm"]["per_fold"]):
        inner = "—" if chosen["inner_ua"] is None else f"{100 * chosen['inner_ua']:.2f}"
        lines.append(f"| {fold} | {chosen['C']:g} | {chosen['gamma_factor']:g} | {inner} |")
    return "\n".join(lines) + "\n"
