"""Training engine: sampler, collate, 2-epoch smoke run with every output file, bad items, NaNs."""
from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from foalnet.cli import main
from foalnet.train.data import BalancedSampler, Collator, EmotionDataset, Item

# Small, fast settings shared by the end-to-end tests of this folder.
FAST = ["--preset", "tiny", "--set", "train.batch_size=4", "--set", "train.eval_batch_size=8",
        "--set", "train.ensemble=1"]


def make_visual_data(visual_dir: Path, dest: Path) -> Path:
    """A private copy of the synthetic DATA_DIR with tiny visual features (conftest's visual_dir)."""
    shutil.copytree(visual_dir, dest, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def data_dir(visual_dir, tmp_path_factory) -> Path:
    return make_visual_data(Path(visual_dir), tmp_path_factory.mktemp("train") / "data")


# ----------------------------------------------------------------------------- sampler / collate


def test_balanced_sampler_draws_classes_equally_with_replacement():
    targets = [0] * 90 + [1] * 10
    sampler = BalancedSampler(targets, seed=1)
    counts = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        draws = list(sampler)
        assert len(draws) == 100  # as many draws as items
        counts.update(targets[i] for i in draws)
    assert abs(counts[1] / 2000 - 0.5) < 0.05  # class 1 is 10 % of items but ~50 % of draws
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # deterministic in (seed, epoch)
    first = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != first
    assert len(set(first)) < 100  # with replacement: repeats


def test_length_grouping_keeps_the_same_draws():
    targets = [0, 1, 2, 3] * 25
    lengths = np.random.default_rng(0).uniform(0.5, 6.0, size=100).tolist()
    plain = BalancedSampler(targets, seed=5)
    grouped = BalancedSampler(targets, seed=5, lengths=lengths, batch_size=4, group_batches=5)
    assert sorted(plain) == sorted(grouped)  # same multiset: class balance unchanged
    order = list(grouped)
    batches = [order[i:i + 4] for i in range(0, 100, 4)]
    for batch in batches:  # each batch sorted by length inside its window
        lens = [lengths[i] for i in batch]
        assert lens == sorted(lens, reverse=True)


@pytest.mark.parametrize("n_items", [102, 99])  # 102 % 4 == 2 and 99 % 4 == 3: one short batch
def test_every_loader_batch_of_a_length_grouped_epoch_is_one_group(n_items):
    """The DataLoader cuts the index stream every batch_size: each cut must be one sorted group."""
    from torch.utils.data import DataLoader

    targets = [0, 1, 2] * (n_items // 3)
    lengths = np.random.default_rng(1).permutation(n_items).astype(float).tolist()  # all distinct
    sampler = BalancedSampler(targets, seed=3, lengths=lengths, batch_size=4, group_batches=100)
    loader = DataLoader(list(range(n_items)), batch_size=4, sampler=sampler)
    for epoch in range(6):  # with the short batch shuffled into the middle, ~every epoch fails
        sampler.set_epoch(epoch)
        ranked = sorted(sampler.indices(), key=lambda i: -lengths[i])  # the epoch's one window
        groups = {tuple(sorted(lengths[i] for i in ranked[k:k + 4])) for k in range(0, n_items, 4)}
        batches = [b.tolist() for b in loader]
        assert [len(b) for b in batches] == [4] * (n_items // 4) + [n_items % 4]  # short one last
        for batch in batches:
            assert tuple(sorted(lengths[i] for i in batch)) in groups


def test_av_training_without_visual_features_is_a_usage_error(prepared_dir, tmp_path, caplog):
    run = tmp_path / "run"
    assert main(["train", str(prepared_dir), "--fold", "1", "--out", str(run), "--preset", "tiny"]) == 2
    message = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert str(Path(prepared_dir).resolve()) in message
    assert "foalnet extract-visual" in message and "--modality audio" in message
    assert not run.exists()  # refused before anything was written


def test_collate_pads_to_longest_and_masks():
    items = [Item(0, "a", 1, np.ones(5, np.float32), np.ones((2, 3), np.float32)),
             Item(1, "b", 0, np.ones(3, np.float32), np.ones((4, 3), np.float32)),
             Item(2, "c", 2, error="AudioError: truncated")]
    train = Collator(True, True, 3, keep_failed=False)(items)
    assert train["waveform"].shape == (2, 5) and train["video"].shape == (2, 4, 3)
    assert train["waveform_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert train["video_mask"].sum(1).tolist() == [2, 4]
    assert train["waveform"][1, 3:].abs().sum() == 0
    assert train["ids"] == ["a", "b"] and train["failed"] == [("c", "AudioError: truncated")]
    evaluation = Collator(True, True, 3, keep_failed=True)(items)
    assert evaluation["valid"].tolist() == [True, True, False]  # placeholder row, all masked
    assert not evaluation["waveform_mask"][2].any()


def test_dataset_reports_unreadable_items(tmp_path):
    record = {"id": "u1", "label": "neu", "wav": str(tmp_path / "missing.wav"),
              "audio_start": None, "audio_end": None}
    ds = EmotionDataset([record], ["neu", "hap"], use_video=False)
    item = ds[0]
    assert item.error and "missing.wav" in item.error and item.waveform is None
    assert ds.failed == {"u1": item.error}
    with pytest.raises(ValueError, match="not in the model labels"):
        EmotionDataset([{**record, "label": "fear"}], ["neu"], use_video=False)


# ----------------------------------------------------------------------------- end to end


def test_two_epoch_smoke_run_writes_every_output(data_dir, tmp_path):
    from foalnet.features.store import VisualFeatureStore
    from foalnet.model.foalnet import FoalNet

    run = tmp_path / "run"
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(run), *FAST,
                 "--set", "train.epochs=2"]) == 0
    for name in ("config.yaml", "labels.txt", "metrics.csv", "predictions.csv", "confusion.png",
                 "summary.json", "rejected.jsonl", "best/config.json", "best/model.safetensors"):
        assert (run / name).is_file(), name
    # by default a complete run keeps best/ only: no last/, and its checkpoints are removed
    assert not (run / "last").exists() and not (run / "checkpoints").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    config_text = (run / "config.yaml").read_text()
    assert "git:" in config_text and "torch:" in config_text
    summary = json.loads((run / "summary.json").read_text())
    test = summary["test"]
    assert set(test) >= {"ua", "wa", "macro_f1", "confusion"}
    assert all(0.0 <= test[k] <= 1.0 for k in ("ua", "wa", "macro_f1"))
    assert summary["selected_epoch"] in (1, 2) and summary["selected_on"] == "dev"
    assert "test fold 1 untouched" in summary["protocol"] and summary["skipped_items"] == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "dev_ua" in rows[0]
    preds = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(preds) == summary["test_items"] == sum(map(sum, test["confusion"]))
    labels = (run / "labels.txt").read_text().split()
    for row in preds:
        assert sum(float(row[f"p_{lab}"]) for lab in labels) == pytest.approx(1.0, abs=1e-4)
    # both model folders load, and record how the visual features were made
    store = VisualFeatureStore.open(data_dir)
    model = FoalNet.from_pretrained(run / "best")
    assert model.labels == labels
    assert model.config.visual_encoder == "tiny" and model.config.video_dim == store.dim
    # the selected weights are the ones in best/: re-evaluating them reproduces the test UA
    assert summary["test"]["n"] == len(preds)


def test_last_and_checkpoints_are_kept_when_asked(data_dir, tmp_path):
    from foalnet.model.foalnet import FoalNet
    from foalnet.train.checkpoint import find_latest

    run = tmp_path / "run"
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(run), *FAST, "--set", "train.epochs=2",
                 "--set", "train.checkpoint_every=2", "--save-last", "--keep-checkpoints", "1"]) == 0
    assert FoalNet.from_pretrained(run / "last").labels == (run / "labels.txt").read_text().split()
    kept = [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert sorted(kept) == ["e0002-s000000", "latest"]  # the latest one only
    assert find_latest(run / "checkpoints").name == "e0002-s000000"
    with_set = tmp_path / "set"
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(with_set), *FAST, "--set", "train.epochs=1",
                 "--set", "train.save_last=true", "--set", "train.keep_checkpoints=2"]) == 0
    assert (with_set / "last" / "model.safetensors").is_file() and find_latest(with_set / "checkpoints")
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(tmp_path / "bad"), *FAST,
                 "--keep-checkpoints", "-1"]) == 2


def test_select_on_test_is_labelled_everywhere(data_dir, tmp_path):
    run = tmp_path / "paper"
    assert main(["train", str(data_dir), "--fold", "2", "--out", str(run), *FAST,
                 "--set", "train.epochs=1", "--select-on-test", "--modality", "audio"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_on"] == "test" and "select-on-test" in summary["protocol"]
    assert "test_ua" in (run / "metrics.csv").read_text().splitlines()[0]
    assert "select_on_test: true" in (run / "config.yaml").read_text()
    assert summary["modality"] == "audio" and not summary["use_avel"]


def test_corrupt_feature_and_audio_are_skipped_reported_and_counted(data_dir, tmp_path, capsys):
    from foalnet.data.manifest import read_manifest
    from foalnet.features.store import VisualFeatureStore

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    store = VisualFeatureStore.open(data)
    test_items = [r for r in read_manifest(data) if r["fold"] == 3]
    bad_feat, bad_wav = test_items[0], test_items[1]
    store.path_of(bad_feat["id"]).write_bytes(b"not a numpy file")
    wav_copy = tmp_path / "broken.wav"
    wav_copy.write_bytes(Path(bad_wav["wav"]).read_bytes()[:30])  # truncated header
    lines = (data / "manifest.jsonl").read_text().splitlines()
    lines = [ln.replace(json.dumps(bad_wav["wav"]), json.dumps(str(wav_copy))) for ln in lines]
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    run = tmp_path / "run"
    # project rule: anything rejected -> exit 1, but the run completes and writes its outputs
    assert main(["train", str(data), "--fold", "3", "--out", str(run), *FAST,
                 "--set", "train.epochs=1"]) == 1
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 item(s) were rejected" in closing and "exit status 1" in closing
    summary = json.loads((run / "summary.json").read_text())
    rejected = [json.loads(x) for x in (run / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejected} == {bad_feat["id"], bad_wav["id"]}
    assert all(r["reason"] for r in rejected)
    assert summary["skipped_items"] == 2
    assert summary["test"]["n"] == len(test_items) - 2  # the rest was evaluated

    # cv over that (already complete, so not re-run) fold: exit 1 too, rejections gathered
    cv = tmp_path / "cv"
    shutil.copytree(run, cv / "fold3")
    assert main(["cv", str(data), "--out", str(cv), *FAST, "--set", "train.epochs=1",
                 "--folds", "3"]) == 1  # the run's own settings: other ones are refused
    assert "exit status 1" in capsys.readouterr().out.strip().splitlines()[-1]
    gathered = [json.loads(x) for x in (cv / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in gathered) == sorted(r["id"] for r in rejected)
    assert {r["fold"] for r in gathered} == {3}
    assert json.loads((cv / "summary.json").read_text())["skipped_items"] == 2


class _NanHooks:
    """Default hooks, but the loss is NaN on the steps listed (or on every step)."""

    def __init__(self, steps=None):
        from foalnet.train.loop import Hooks

        self.base, self.steps, self.step = Hooks(), steps, 0

    def __getattr__(self, name):
        return getattr(self.base, name)

    def compute_objectives(self, output, batch):
        loss, parts = self.base.compute_objectives(output, batch)
        self.step += 1
        if self.steps is None or self.step in self.steps:
            loss = loss * float("nan")
        return loss, parts


def _tiny_cfg(data_dir, *extra):
    from foalnet.config import preset

    return preset("tiny").override([f"data.data_dir={data_dir}", "data.fold=1", "train.batch_size=4",
                                    "train.eval_batch_size=8", "train.ensemble=1", *extra])


def test_nan_steps_are_skipped_then_repeated_nans_stop_with_checkpoint_kept(data_dir, tmp_path):
    from foalnet.train.checkpoint import find_latest
    from foalnet.train.loop import TrainingDiverged
    from foalnet.train.run import train_fold

    summary = train_fold(_tiny_cfg(data_dir, "train.epochs=1"), tmp_path / "a", hooks=_NanHooks({2, 3}))
    assert summary["nan_steps"] == 2 and (tmp_path / "a" / "summary.json").is_file()

    cfg = _tiny_cfg(data_dir, "train.epochs=2", "train.nan_patience=3")
    hooks = _NanHooks(set(range(_steps_per_epoch(cfg) + 1, 10_000)))  # epoch 1 fine, then NaN
    with pytest.raises(TrainingDiverged, match="Last good checkpoint kept: .*e0001-s000000"):
        train_fold(cfg, tmp_path / "b", hooks=hooks)
    latest = find_latest(tmp_path / "b" / "checkpoints")
    assert latest is not None and latest.name == "e0001-s000000"
    assert not (tmp_path / "b" / "summary.json").exists()


class _WeightsAfterEachStep:
    """Default hooks that record the trained (not averaged) weights after every optimiser step."""

    def __init__(self):
        from foalnet.train.loop import Hooks

        self.base, self.weights = Hooks(), []

    def __getattr__(self, name):
        return getattr(self.base, name)

    def on_step_end(self, engine, state):
        self.weights.append({k: v.detach().clone() for k, v in self.trained.state_dict().items()})


def test_moving_average_is_the_model_kept(data_dir, tmp_path, monkeypatch):
    """train.ema_decay=0.5 over 3 steps: best/ and last/ hold 1/4 w1 + 1/4 w2 + 1/2 w3 of the
    trained weights w_t after step t (the first update copies w1), by hand; without it, w3."""
    import foalnet.train.run as run_module
    from foalnet.model.foalnet import FoalNet

    make_average = run_module.moving_average

    def train(name: str, *extra: str) -> tuple[list[dict], dict, dict]:
        hooks = _WeightsAfterEachStep()

        def recording(acc, model, decay):  # the engine's trained model, for the hooks
            hooks.trained = acc.unwrap_model(model)
            return make_average(acc, model, decay)

        monkeypatch.setattr(run_module, "moving_average", recording)
        cfg = _tiny_cfg(data_dir, "train.epochs=1", "train.max_steps=3", "train.save_last=true", *extra)
        run_module.train_fold(cfg, tmp_path / name, hooks=hooks)
        return hooks.weights, *(FoalNet.from_pretrained(tmp_path / name / d).state_dict() for d in ("last", "best"))

    (w1, w2, w3), last, best = train("ema", "train.ema_decay=0.5")
    moved = [k for k in w1 if w1[k].is_floating_point() and not torch.equal(w1[k], w3[k])]
    assert len(moved) > 10
    for k in moved:
        torch.testing.assert_close(last[k], 0.25 * w1[k] + 0.25 * w2[k] + 0.5 * w3[k], rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(best[k], last[k])  # one epoch: the selected weights are the average too
    weights, last, _ = train("plain")
    assert all(torch.equal(last[k], weights[-1][k]) for k in moved)


def _steps_per_epoch(cfg) -> int:
    from foalnet.train.run import load_fold

    n = len(load_fold(cfg).train)
    return -(-n // cfg.train.batch_size)


def test_cv_summary_report_and_skip_of_completed_folds(data_dir, tmp_path):
    out = tmp_path / "cv"
    args = ["cv", str(data_dir), "--out", str(out), *FAST, "--set", "train.epochs=1",
            "--folds", "1,2", "--modality", "video"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == [1, 2] and len(summary["ua"]["per_fold"]) == 2
    assert summary["ua"]["mean"] == pytest.approx(np.mean(summary["ua"]["per_fold"]))
    assert (out / "confusion.png").is_file() and "mean ± std" in (out / "report.md").read_text()
    stamp = (out / "fold1" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0  # completed folds are not re-run
    assert (out / "fold1" / "summary.json").stat().st_mtime_ns == stamp


def test_bad_command_line_exits_2(data_dir, tmp_path):
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(tmp_path / "r"), "--preset",
                 "tiny", "--set", "train.epochs=zero"]) == 2
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    (tmp_path / "used" / "checkpoints").mkdir(parents=True)  # an earlier run lives there
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(tmp_path / "used"),
                 "--preset", "tiny"]) == 2
    assert main(["cv", str(data_dir), "--out", str(tmp_path / "c"), "--preset", "tiny",
                 "--folds", "9"]) == 2


def test_engine_uses_gather_for_metrics_with_placeholder_rows():
    """Evaluation keeps unreadable items as masked rows so every process has equal batches."""
    collate = Collator(True, False, 4, keep_failed=True)
    batch = collate([Item(0, "a", 0, np.ones(3, np.float32)), Item(1, "b", 1, error="x")])
    assert batch["index"].tolist() == [0, 1] and batch["valid"].tolist() == [True, False]
    assert batch["waveform"].shape == (2, 3) and torch.equal(batch["labels"], torch.tensor([0, 1]))


def test_build_optimizer_is_fused_adamw_with_the_default_update():
    from foalnet.train.loop import build_optimizer

    torch.manual_seed(0)
    fused_params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(5))]
    plain_params = [torch.nn.Parameter(p.detach().clone()) for p in fused_params]
    fused = build_optimizer(fused_params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    plain = torch.optim.AdamW(plain_params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    assert fused.defaults["fused"] is True  # torch >= 2.4 has a CPU kernel
    for _ in range(3):
        grads = [torch.randn_like(p) for p in fused_params]
        for params, opt in ((fused_params, fused), (plain_params, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_params, plain_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _process_state() -> dict:
    """What a library must not change in its caller's process: environment and torch's globals."""
    backends = torch.backends
    return {
        "environ": dict(os.environ),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "default_dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad": torch.is_grad_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": backends.mkldnn.enabled,
        "cudnn": (backends.cudnn.enabled, backends.cudnn.benchmark, backends.cudnn.deterministic,
                  backends.cudnn.allow_tf32),
        "cuda_matmul_tf32": backends.cuda.matmul.allow_tf32,
        "sdp": (backends.cuda.flash_sdp_enabled(), backends.cuda.mem_efficient_sdp_enabled(),
                backends.cuda.math_sdp_enabled()),
        "anomaly": torch.is_anomaly_enabled(),
    }


def test_default_run_changes_nothing_process_wide(data_dir, tmp_path):
    """``foalnet train`` (in-process, default settings) leaves os.environ and torch's global flags
    as it found them: no allocator, thread or backend setting leaks into the caller.

    Two dependencies write os.environ when first imported, whoever imports them: scikit-learn
    (``KMP_DUPLICATE_LIB_OK``, ``KMP_INIT_AT_FORK``, setdefault) and torch's compiler stack, which
    the first ``torch.optim`` optimiser imports (``TORCHINDUCTOR_CACHE_DIR``). Both are loaded
    first, so what is compared is what foalnet's own code does."""
    import sklearn  # noqa: F401

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # loads what every optimiser loads

    before = _process_state()
    assert main(["train", str(data_dir), "--fold", "1", "--out", str(tmp_path / "run"), *FAST,
                 "--set", "train.epochs=1", "--set", "train.max_steps=2"]) == 0
    after = _process_state()
    assert after["environ"] == before["environ"]
    assert after == before
