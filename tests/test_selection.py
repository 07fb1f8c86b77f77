"""Model selection on small dev splits (issue 15 item 3): dev speakers scaled to the corpus,
the trailing-mean selection score, and the stability report in summary.json."""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest

from foalnet.cli import main
from foalnet.train.loop import selection_stability, trailing_mean
from foalnet.train.run import resolve_dev_speakers


def _records(speakers: int, per_speaker: int, folds: int) -> list[dict]:
    return [{"id": f"s{s}_{i}", "speaker": f"s{s}", "fold": s % folds + 1}
            for s in range(speakers) for i in range(per_speaker)]


@pytest.mark.parametrize("speakers, per_speaker, folds, expected", [
    (10, 550, 5, 1),  # IEMOCAP-like: 8 pool speakers of 550, 10 % = 440 items: one speaker
    (12, 8, 6, 3),  # 96 clips: 48 items would need 6 of the 10 pool actors; capped at a third
    (12, 28, 6, 2),  # 336 clips: 48 items = 2 actors of 28
])
def test_auto_dev_speakers_scale_with_the_corpus(speakers, per_speaker, folds, expected):
    data = SimpleNamespace(dev_speakers="auto", fold=1)
    assert resolve_dev_speakers(_records(speakers, per_speaker, folds), data) == expected


def test_explicit_dev_speakers_and_records_without_speakers():
    records = _records(12, 8, 6)
    assert resolve_dev_speakers(records, SimpleNamespace(dev_speakers=2, fold=1)) == 2
    for r in records:
        r["speaker"] = None
    assert resolve_dev_speakers(records, SimpleNamespace(dev_speakers="auto", fold=1)) == 1


def test_trailing_mean_skips_epochs_without_a_score():
    assert trailing_mean([0.2, None, 0.4, 0.6], 3) == pytest.approx(0.5)
    assert trailing_mean([0.3], 3) == pytest.approx(0.3)


def test_stability_of_a_coin_flip_dev_split_by_hand():
    """8 dev clips, UA jumping between 0.25 and 0.75 (the issue's case)."""
    raw = [0.25, 0.75, 0.5, 0.75, 0.5]
    one = selection_stability(raw, window=1, dev_items=8, metric="ua")
    assert one["selected_epoch"] == 2 and one["score"] == 0.75  # first of the tied epochs
    assert one["noise"] == pytest.approx(math.sqrt(0.7 * 0.3 / 8))  # p = (6 + 1) / (8 + 2): 0.162
    assert one["near_best_epochs"] == [2, 4] and one["near_best_share"] == 0.4
    assert one["epoch_to_epoch_change"] == 0.25
    three = selection_stability(raw, window=3, dev_items=8, metric="ua")
    # trailing means 0.25, 0.5, 0.5, 0.667, 0.583: epoch 4; within 0.170 of it: epochs 2-5
    assert three["selected_epoch"] == 4 and three["score"] == pytest.approx(2 / 3)
    assert three["near_best_epochs"] == [2, 3, 4, 5] and three["near_best_span"] == [2, 5]
    loss = selection_stability([-1.0, -0.8, -0.9, -0.7], window=1, dev_items=8, metric="loss")
    assert loss["selected_epoch"] == 4  # changes 0.2, 0.1, 0.2: median 0.2
    assert loss["noise"] == pytest.approx(0.2 / math.sqrt(2))
    assert selection_stability([None, None], 3, 8, "ua") is None
    perfect = selection_stability([1.0, 0.9], window=1, dev_items=8, metric="ua")
    assert perfect["noise"] == pytest.approx(math.sqrt(0.9 * 0.1 / 8))  # not 0: 8 clips
    assert perfect["near_best_epochs"] == [1, 2]


def test_a_run_reports_its_selection_and_the_smoothed_scores(prepared_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(prepared_dir), "--fold", "1", "--out", str(out), "--preset", "tiny",
                 "--modality", "audio", "--set", "train.epochs=3", "--set", "train.batch_size=8", "--set", "train.ensemble=1",
                 "--set", "data.cache_audio=false", "--set",  # speaker_norm needs the cache
                 "model.audio_options={attention_heads: 4, egemaps: true, use_mel: false, use_prosody: false}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    selection = summary["selection"]
    assert selection["selected_epoch"] == summary["selected_epoch"]
    assert selection["window"] == 3 and selection["dev_items"] == summary["dev_items"]
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    raw = [float(r["dev_ua"]) for r in rows]
    smoothed = [float(r["select_score"]) for r in rows]
    assert smoothed == pytest.approx([trailing_mean(raw[: i + 1], 3) for i in range(3)])
    assert summary["selected_epoch"] == 1 + max(range(3), key=lambda i: (smoothed[i], -i))


def test_without_a_dev_split_every_training_speaker_trains_and_the_last_epoch_is_kept(prepared_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(prepared_dir), "--fold", "1", "--out", str(out), "--preset", "tiny",
                 "--modality", "audio", "--set", "train.epochs=3", "--set", "train.batch_size=8",
                 "--set", "train.ensemble=1", "--set", "data.dev_speakers=0", "--set", "data.cache_audio=false",
                 "--set", "model.audio_options={attention_heads: 4}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    manifest = [json.loads(line) for line in (prepared_dir / "manifest.jsonl").read_text().splitlines()]
    assert summary["dev_items"] == 0 and summary["selection"] is None
    assert summary["train_items"] == sum(int(r["fold"]) != 1 for r in manifest)  # the whole pool
    assert summary["selected_epoch"] == 3 and "no dev split" in summary["protocol"]
    with open(out / "metrics.csv", newline="") as fh:
        assert [row["best"] for row in csv.DictReader(fh)] == ["True", "True", "True"]
