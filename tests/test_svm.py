"""`foalnet svm` (eGeMAPS functionals + RBF-SVM) and the `egemaps_svm` ablation row: outputs in
cv's format, the feature cache's reuse and its failure reports, the SVM's own pieces by hand."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from foalnet.cli import main
from foalnet.data.manifest import read_manifest
from foalnet.features.egemaps import EgemapsSettings, EgemapsStore, build_egemaps_cache
from foalnet.train.svm import (class_scores, inner_groups, make_classifier, select_params,
                               speaker_normalise, SvmSettings)

QUICK = ["--c-grid", "1,10", "--gamma-grid", "1", "--inner-folds", "3", "--no-progress"]


@pytest.fixture()
def data(prepared_dir, tmp_path) -> Path:
    """A private copy of the prepared synthetic DATA_DIR (svm writes DATA_DIR/egemaps/)."""
    dest = tmp_path / "data"
    shutil.copytree(prepared_dir, dest)
    return dest


def _predictions(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_svm_writes_the_outputs_of_cv_and_its_numbers_come_from_its_predictions(data, tmp_path):
    out = tmp_path / "svm"
    assert main(["svm", str(data), "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = read_manifest(data)
    folds = sorted({r["fold"] for r in records})
    assert summary["folds"] == folds and summary["method"] == "egemaps_svm"
    labels = summary["labels"]
    for i, fold in enumerate(folds):
        rows = _predictions(out / f"fold{fold}" / "predictions.csv")
        # every test item of the fold, once, and nothing else
        in_fold = [r["id"] for r in records if r["fold"] == fold]
        assert sorted(r["id"] for r in rows) == sorted(in_fold)
        for row in rows:  # the prediction is the argmax of the written scores
            scores = [float(row[f"p_{name}"]) for name in labels]
            assert row["prediction"] == labels[int(np.argmax(scores))]
            assert abs(sum(scores) - 1) < 1e-4
        truth = [labels.index(r["label"]) for r in rows]
        pred = [labels.index(r["prediction"]) for r in rows]
        recalls = [np.mean([p == c for t, p in zip(truth, pred) if t == c]) for c in set(truth)]
        assert summary["ua"]["per_fold"][i] == pytest.approx(np.mean(recalls))
        assert (out / f"fold{fold}" / "confusion.png").stat().st_size > 0
    assert summary["ua"]["mean"] == pytest.approx(np.mean(summary["ua"]["per_fold"]))
    lo, hi = summary["ua"]["ci95"]
    assert lo <= summary["ua"]["mean"] <= hi and summary["bootstrap"]["resamples"] == 1000
    assert summary["skipped_items"] == 0 and (out / "rejected.jsonl").read_text() == ""
    assert len(summary["svm"]["per_fold"]) == len(folds)
    chosen = summary["svm"]["per_fold"]
    assert all(p["C"] in (1.0, 10.0) and p["gamma_factor"] == 1.0 for p in chosen)
    report = (out / "report.md").read_text()
    assert "| mean ± std |" in report and "95 % CI of the mean" in report and "## SVM" in report
    assert (out / "confusion.png").stat().st_size > 0


def test_features_are_cached_per_file_and_recomputed_when_the_file_changes(data):
    records = read_manifest(data)
    store, first = build_egemaps_cache(data, records, progress=False)
    assert (first.done, first.reused, first.failed) == (len(records), 0, 0)
    assert store.dim == 88 and store.load(records[0]["id"]).shape == (1, 88)
    before = np.array(store.load(records[1]["id"]))
    _, again = build_egemaps_cache(data, records, progress=False)
    assert (again.done, again.reused) == (0, len(records))
    st = os.stat(records[1]["wav"])  # same bytes, new mtime: a changed file for the key
    os.utime(records[1]["wav"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    store, third = build_egemaps_cache(data, records, progress=False)
    assert (third.done, third.reused) == (1, len(records) - 1)
    np.testing.assert_allclose(store.load(records[1]["id"]), before)
    # other settings get their own folder, never mixed with these values
    other, _ = build_egemaps_cache(data, records[:2], EgemapsSettings(sample_rate=8000),
                                   progress=False)
    assert other.root != store.root and sorted(EgemapsStore.available(data)) == sorted(
        [store.slug, other.slug])


def _rewrite_manifest(data: Path, records: list[dict]) -> None:
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_an_unreadable_and_a_too_short_item_are_reported_and_the_rest_goes_on(data, tmp_path):
    records = read_manifest(data)
    broken, short = records[0], records[1]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    broken["wav"] = str(bad)
    short["audio_start"], short["audio_end"] = 0.0, 0.01  # 160 samples: no functionals
    _rewrite_manifest(data, records)
    out = tmp_path / "svm"
    assert main(["svm", str(data), "--out", str(out), *QUICK]) == 1  # completed with rejected items
    rejected = {json.loads(line)["id"]: json.loads(line)
                for line in (out / "rejected.jsonl").read_text().splitlines()}
    assert set(rejected) == {broken["id"], short["id"]}
    assert rejected[broken["id"]]["path"] == str(bad)
    assert "too short" in rejected[short["id"]]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_items"] == 2
    predicted = {r["id"] for f in summary["folds"]
                 for r in _predictions(out / f"fold{f}" / "predictions.csv")}
    assert predicted == {r["id"] for r in records} - {broken["id"], short["id"]}
    store = EgemapsStore.open(data)
    lines = (store.root / "rejected.jsonl").read_text().splitlines()
    listed = {json.loads(line)["id"] for line in lines}
    assert listed == {broken["id"], short["id"]}


def test_unknown_fold_is_a_usage_error(data, tmp_path, caplog):
    assert main(["svm", str(data), "--out", str(tmp_path / "o"), "--folds", "9", *QUICK]) == 2
    assert "folds [9] are not in the manifest" in caplog.text


def test_ablate_has_the_svm_row_beside_the_paper_rows(data, tmp_path):
    from foalnet.train.ablate import paired_vs_full

    out = tmp_path / "abl"
    assert main(["ablate", str(data), "--out", str(out), "--preset", "tiny",
                 "--rows", "egemaps_svm", "--folds", "1,2"]) == 0
    results = json.loads((out / "ablation.json").read_text())
    assert list(results) == ["egemaps_svm"] and results["egemaps_svm"]["folds"] == [1, 2]
    table = (out / "ablation.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| egemaps_svm |"))
    assert row.endswith("| — | — |")  # no paper numbers for the classical baseline
    # a "full" model right on every item: the paired difference is the SVM's UA minus 1
    summary = results["egemaps_svm"]
    for fold in summary["folds"]:
        rows = _predictions(out / "egemaps_svm" / f"fold{fold}" / "predictions.csv")
        (out / "full" / f"fold{fold}").mkdir(parents=True)
        lines = ["id,label,prediction"] + [f"{r['id']},{r['label']},{r['label']}" for r in rows]
        (out / "full" / f"fold{fold}" / "predictions.csv").write_text("\n".join(lines) + "\n")
    paired = paired_vs_full(out, "egemaps_svm", summary)
    assert paired["ua_diff"] == pytest.approx(summary["ua"]["mean"] - 1.0)


# ----------------------------------------------------------------------------- pieces by hand


def test_speaker_normalisation_uses_each_speakers_own_statistics():
    X = np.array([[1.0, 10.0], [3.0, 10.0], [100.0, 0.0], [104.0, 2.0]])
    out = speaker_normalise(X, ["a", "a", "b", "b"])
    np.testing.assert_allclose(out, [[-1, 0], [1, 0], [-1, -1], [1, 1]])  # constant column: centred


def test_inner_groups_keep_speakers_apart_and_need_two():
    speakers = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    splits = inner_groups(speakers, folds=5)
    assert len(splits) == 3  # fewer speakers than folds: one group per speaker
    for train, val in splits:
        assert not {speakers[i] for i in train} & {speakers[i] for i in val}
    assert inner_groups(["a"] * 4, folds=5) == []


def test_selection_ties_go_to_the_smaller_c_and_one_speaker_gets_the_defaults():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 0.3, (12, 2)), rng.normal(3, 0.3, (12, 2))])
    y = np.array([0] * 12 + [1] * 12)
    speakers = [f"s{i % 4}" for i in range(24)]
    chosen = select_params(X, y, speakers, SvmSettings(c_grid=(10.0, 1.0), gamma_grid=(1.0,)), 2)
    assert chosen["inner_ua"] == 1.0 and chosen["C"] == 1.0  # separable: every C ties at 1.0
    alone = select_params(X, y, ["s0"] * 24, SvmSettings(), 2)
    assert (alone["C"], alone["gamma_factor"], alone["inner_ua"]) == (1.0, 1.0, None)


def test_scores_put_unseen_classes_at_zero_and_follow_predict():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-2, 1, (10, 3)), rng.normal(2, 1, (10, 3))])
    y = np.array([0] * 10 + [2] * 10)  # class 1 absent from training
    clf = make_classifier(1.0, 1.0, 3).fit(X, y)
    scores = class_scores(clf, X, 3)
    assert np.all(scores[:, 1] == 0) and np.array_equal(scores.argmax(axis=1), clf.predict(X))


def test_bad_grid_is_refused_with_the_values():
    with pytest.raises(ValueError, match=r"c_grid=\[0.0\]"):
        SvmSettings(c_grid=(0.0,))
