"""train.ensemble: K seeded runs per fold, scored by the mean of their class probabilities."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from foalnet.cli import main
from foalnet.data.manifest import read_manifest
from foalnet.model.ensemble import ENSEMBLE_FILE, FoalNetEnsemble, load_model, save_ensemble_folder
from foalnet.model.foalnet import FoalNet, FoalNetConfig

FAST = ["--preset", "tiny", "--modality", "audio", "--set", "train.batch_size=4",
        "--set", "train.eval_batch_size=8", "--set", "train.epochs=1", "--set", "train.ensemble=2"]


def video_model(seed: int, **overrides) -> FoalNet:
    torch.manual_seed(seed)
    settings = {"modality": "video", "use_avel": False, "use_mem": False, "labels": ["neu", "hap", "sad"]}
    return FoalNet(FoalNetConfig.tiny(**{**settings, **overrides})).eval()


def video_batch() -> dict:
    g = torch.Generator().manual_seed(3)
    return {"video": torch.randn(3, 5, 128, generator=g),
            "video_mask": torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 4 + [0]], dtype=torch.bool)}


def test_ensemble_probabilities_are_the_members_mean_and_survive_a_save_load(tmp_path):
    members = [video_model(0), video_model(1)]
    batch = video_batch()
    with torch.no_grad():
        each = [torch.softmax(m(**batch).logits, -1) for m in members]
        ensemble = FoalNetEnsemble(members)
        probs = torch.softmax(ensemble(**batch).logits, -1)
    assert not torch.allclose(each[0], each[1], atol=1e-3)  # two different models
    torch.testing.assert_close(probs, (each[0] + each[1]) / 2, atol=1e-6, rtol=0)
    for k, m in enumerate(members, start=1):
        m.save_pretrained(tmp_path / f"run{k}")
    folder = save_ensemble_folder(tmp_path / "best", [tmp_path / "run1", tmp_path / "run2"])
    assert json.loads((folder / ENSEMBLE_FILE).read_text())["members"] == ["member1", "member2"]
    loaded = load_model(folder).eval()
    assert isinstance(loaded, FoalNetEnsemble) and loaded.labels == ["neu", "hap", "sad"]
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(loaded(**batch).logits, -1), probs, atol=1e-6, rtol=0)


def test_ensemble_refuses_members_of_other_classes_and_a_bad_ensemble_file(tmp_path):
    with pytest.raises(ValueError, match="member 2 differs from member 1 in labels"):
        FoalNetEnsemble([video_model(0), video_model(1, labels=["neu", "ang", "sad"])])
    (tmp_path / ENSEMBLE_FILE).write_text(json.dumps({"model_type": "foalnet"}))
    with pytest.raises(ValueError, match="expected model_type foalnet_ensemble"):
        load_model(tmp_path)


def _probabilities(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        return {r["id"]: np.array([float(v) for k, v in r.items() if k.startswith("p_")])
                for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def ensemble_cv(prepared_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("ens") / "data"
    shutil.copytree(prepared_dir, data)
    out = data.parent / "cv"
    assert main(["cv", str(data), "--out", str(out), *FAST, "--folds", "1"]) == 0
    return data, out


def test_cv_fold_of_an_ensemble_scores_the_mean_of_its_members(ensemble_cv):
    data, out = ensemble_cv
    fold = out / "fold1"
    seeds = [yaml.safe_load((fold / f"member{k}" / "config.yaml").read_text())["train"]["seed"] for k in (1, 2)]
    assert seeds == [1234, 2234]
    members = [_probabilities(fold / f"member{k}" / "predictions.csv") for k in (1, 2)]
    mean = _probabilities(fold / "predictions.csv")
    assert set(mean) == set(members[0]) == set(members[1]) and mean
    for item, p in mean.items():
        np.testing.assert_allclose(p, (members[0][item] + members[1][item]) / 2, atol=2e-6)
    summary = json.loads((fold / "summary.json").read_text())
    member_ua = [json.loads((fold / f"member{k}" / "summary.json").read_text())["test"]["ua"] for k in (1, 2)]
    assert summary["ensemble"]["member_ua"] == member_ua and summary["ensemble"]["member_seeds"] == seeds
    assert len(summary["selected_epoch"]) == 2
    cv_summary = json.loads((out / "summary.json").read_text())
    assert cv_summary["ua"]["per_fold"] == [summary["test"]["ua"]]
    assert (fold / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the members' curves


def test_ensemble_curves_draw_every_member_and_mark_each_kept_epoch():
    import io

    from matplotlib.image import imread

    from foalnet.train.figures import ensemble_curves_png

    histories = [[{"epoch": e, "dev_loss": 1.0 / e + k, "dev_ua": 0.1 * e + 0.05 * k} for e in range(1, 6)]
                 for k in range(2)]
    png = ensemble_curves_png(histories, [2, 4], title="fold 1")
    image = imread(io.BytesIO(png))
    assert image.shape[:2] == (234, 576)  # 6.4 x 2.6 inches at 90 dpi
    assert ensemble_curves_png(histories, [2, 5]) != ensemble_curves_png(histories, [2, 4])  # the dot moves
    assert ensemble_curves_png(histories[:1], [2]) != ensemble_curves_png(histories, [2, 4])
    # no dev split: the loss panel falls back to the members' train CE instead of staying empty
    train_only = [[{"epoch": e, "train_ce": 1.0 / e + k} for e in range(1, 6)] for k in range(2)]
    empty = [[{"epoch": e} for e in range(1, 6)] for _ in range(2)]
    assert ensemble_curves_png(train_only, [5, 5]) != ensemble_curves_png(empty, [5, 5])
    # a member without a kept epoch (none scored) still draws its curve, no dot
    assert ensemble_curves_png(histories, [None, 4])[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_on_an_ensemble_run_averages_its_members(ensemble_cv, capsys):
    data, out = ensemble_cv
    wav = read_manifest(data)[0]["wav"]
    results = []
    for model_dir in (out / "fold1", out / "fold1" / "member1", out / "fold1" / "member2"):
        capsys.readouterr()
        assert main(["predict", str(model_dir), wav]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probabilities"])
    for label, p in results[0].items():
        assert p == pytest.approx((results[1][label] + results[2][label]) / 2, abs=1e-6)  # float32 logits


def test_a_killed_ensemble_resumes_member_by_member(ensemble_cv):
    data, out = ensemble_cv
    fold = out / "fold1"
    before = (fold / "predictions.csv").read_text()
    member1_stamp = (fold / "member1" / "summary.json").stat().st_mtime_ns
    (fold / "summary.json").unlink()  # killed while member 2 trained: only member 1 is complete
    shutil.rmtree(fold / "member2")
    assert main(["train", str(data), "--fold", "1", "--out", str(fold), *FAST]) == 2  # not --resume: refused
    assert main(["cv", str(data), "--out", str(out), *FAST, "--folds", "1"]) == 0
    assert (fold / "member1" / "summary.json").stat().st_mtime_ns == member1_stamp  # reused
    assert (fold / "predictions.csv").read_text() == before  # member 2 retrained to the same weights
