"""`foalnet cv` / `ablate` / `train --resume`: no results of other settings reused, options that
do not apply refused, a rejected file counted once however many folds read it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from foalnet.cli import main

# tiny preset, audio only (no visual features needed), one short epoch per fold
FAST = ["--preset", "tiny", "--modality", "audio", "--set", "train.batch_size=4",
        "--set", "train.eval_batch_size=8", "--set", "train.epochs=1", "--set", "train.ensemble=1"]


def _errors(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")


@pytest.fixture(scope="module")
def audio_data(prepared_dir, tmp_path_factory) -> Path:
    """A private copy of the prepared DATA_DIR (cv writes its audio cache there)."""
    dest = tmp_path_factory.mktemp("cv") / "data"
    shutil.copytree(prepared_dir, dest)
    return dest


@pytest.fixture(scope="module")
def cv_one_fold(audio_data, tmp_path_factory) -> Path:
    """CV_DIR with fold 1 complete under FAST settings."""
    out = tmp_path_factory.mktemp("cvrun") / "cv"
    assert main(["cv", str(audio_data), "--out", str(out), *FAST, "--folds", "1"]) == 0
    return out


def test_cv_rerun_with_other_settings_is_refused_naming_the_keys(audio_data, cv_one_fold, caplog):
    before = (cv_one_fold / "summary.json").read_text()
    stamp = (cv_one_fold / "fold1" / "summary.json").stat().st_mtime_ns
    assert main(["cv", str(audio_data), "--out", str(cv_one_fold), *FAST, "--folds", "1",
                 "--set", "train.lr=0.01"]) == 2
    message = _errors(caplog)
    assert "train.lr: 0.001 there, 0.01 now" in message and "fold1" in message
    caplog.clear()
    # other modality (the case: "av" written over audio-only results)
    assert main(["cv", str(audio_data), "--out", str(cv_one_fold), "--preset", "tiny",
                 "--folds", "1", "--set", "train.epochs=1"]) == 2
    message = _errors(caplog)
    assert "model.modality: 'audio' there, 'av' now" in message
    assert "train.batch_size: 4 there, 16 now" in message
    # nothing was rewritten under the new settings' labels
    assert (cv_one_fold / "summary.json").read_text() == before
    assert (cv_one_fold / "fold1" / "summary.json").stat().st_mtime_ns == stamp
    # the same settings reuse the completed fold
    assert main(["cv", str(audio_data), "--out", str(cv_one_fold), *FAST, "--folds", "1"]) == 0
    assert (cv_one_fold / "fold1" / "summary.json").stat().st_mtime_ns == stamp


def test_interrupted_fold_is_not_resumed_with_other_settings(audio_data, cv_one_fold, tmp_path, caplog):
    """A fold folder without summary (interrupted) was resumed with ITS saved config whatever
    the new flags said (or, without checkpoints, retrained over it); now other flags are refused."""
    cv = tmp_path / "cv"
    shutil.copytree(cv_one_fold, cv)
    (cv / "fold1" / "summary.json").unlink()
    assert main(["cv", str(audio_data), "--out", str(cv), *FAST, "--folds", "1",
                 "--set", "train.seed=7"]) == 2
    assert "train.seed: 1234 there, 7 now" in _errors(caplog)
    assert not (cv / "fold1" / "summary.json").exists()


def test_ablate_refuses_modality_and_row_fields(audio_data, tmp_path, caplog):
    out = tmp_path / "abl"
    base = ["ablate", str(audio_data), "--out", str(out), "--preset", "tiny", "--rows", "baseline",
            "--folds", "1"]
    assert main([*base, "--modality", "audio"]) == 2
    assert "--modality audio does not apply to ablate" in _errors(caplog)
    caplog.clear()
    assert main([*base, "--set", "model.use_mem=true"]) == 2
    assert "--set model.use_mem does not apply to ablate" in _errors(caplog)
    assert not out.exists()
    caplog.clear()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", "model.modality=audio"]) == 2
    assert "--set model.modality does not apply" in _errors(caplog)
    assert not (tmp_path / "demo").exists()


def test_train_resume_refuses_settings_it_would_ignore(audio_data, cv_one_fold, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(cv_one_fold / "fold1", run)
    (run / "summary.json").unlink()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=5"]) == 2
    assert "--set: not applicable to --resume RUN_DIR" in _errors(caplog)
    caplog.clear()
    assert main(["train", str(run), "--resume", "--preset", "paper"]) == 2
    assert "--preset: not applicable" in _errors(caplog)
    caplog.clear()
    # resuming into --out with flags that resolve to another config
    assert main(["train", str(audio_data), "--fold", "1", "--out", str(run), *FAST,
                 "--set", "train.epochs=3", "--resume"]) == 2
    assert "train.epochs: 1 there, 3 now" in _errors(caplog)
    assert not (run / "summary.json").exists()


def test_a_file_emptied_after_prepare_counts_once_over_folds(prepared_dir, tmp_path, capsys):
    from foalnet.data.manifest import read_manifest

    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data)
    bad = next(r for r in read_manifest(data) if r["fold"] == 1)  # test in fold 1, train in 2
    empty = tmp_path / "emptied.wav"
    empty.write_bytes(b"")
    text = (data / "manifest.jsonl").read_text()
    (data / "manifest.jsonl").write_text(text.replace(json.dumps(bad["wav"]), json.dumps(str(empty))))

    out = tmp_path / "cv"
    assert main(["cv", str(data), "--out", str(out), *FAST, "--folds", "1,2"]) == 1
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert "but 1 item(s) were rejected" in closing
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_items"] == 1 and summary["skipped_per_fold"] == [1, 1]
    gathered = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["fold"], r["id"]) for r in gathered] == [(1, bad["id"]), (2, bad["id"])]
    assert "1 distinct (per fold: [1, 1])" in (out / "report.md").read_text()


def test_cv_summary_and_report_carry_the_bootstrap_interval(cv_one_fold):
    summary = json.loads((cv_one_fold / "summary.json").read_text())
    for key in ("ua", "wa"):
        lo, hi = summary[key]["ci95"]
        assert 0.0 <= lo <= summary[key]["mean"] <= hi <= 1.0
    assert summary["bootstrap"]["seed"] == 0 and summary["bootstrap"]["resamples"] == 1000
    assert "within each fold" in summary["bootstrap"]["method"]
    lo, hi = summary["ua"]["ci95"]
    assert f"| 95 % CI of the mean | [{100 * lo:.2f}, {100 * hi:.2f}]" in (
        cv_one_fold / "report.md").read_text()


def _predictions(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = ["id,label,prediction,p_a,p_b"] + [f"{i},{t},{p},0.5,0.5" for i, t, p in rows]
    (path / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_ablation_row_gets_its_paired_ua_difference_to_the_full_model(tmp_path):
    """Hand-checkable: full right on all 20 items; the row misses every `b` item, so its UA is
    0.5 lower on every resample holding both classes; an item only one row evaluated is left out."""
    from foalnet.train.ablate import ablation_markdown, paired_vs_full

    items = [(f"u{i}", "ab"[i % 2]) for i in range(20)]
    _predictions(tmp_path / "full" / "fold1", [(i, t, t) for i, t in items] + [("extra", "b", "a")])
    _predictions(tmp_path / "audio_only" / "fold1", [(i, t, "a") for i, t in items])
    summary = {"folds": [1], "labels": ["a", "b"]}
    paired = paired_vs_full(tmp_path, "audio_only", summary)
    assert (paired["ua_diff"], paired["interval"], paired["items"]) == (-0.5, [-0.5, -0.5], 20)
    row = {"folds": [1], "labels": ["a", "b"], "protocol": "p", "vs_full": paired,
           "ua": {"mean": 0.5, "std": 0.0, "ci95": [0.4, 0.6]}, "wa": {"mean": 0.5, "std": 0.0}}
    table = ablation_markdown({"audio_only": row})
    assert "| audio_only | 50.00 ± 0.00 [40.00, 60.00] | 50.00 ± 0.00 | -50.00 [-50.00, -50.00] |" in table


# ----------------------------------------------------------------------------- seeds


@pytest.fixture(scope="module")
def cv_seeds(audio_data, tmp_path_factory) -> tuple[Path, str]:
    """CV_DIR of `cv --seeds 1,2 --folds 1` (FAST) and what the run printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("seeds") / "cv"
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        assert main(["cv", str(audio_data), "--out", str(out), *FAST, "--folds", "1",
                     "--seeds", "1,2"]) == 0
    return out, printed.getvalue() + errors.getvalue()


def test_cv_seeds_one_cv_per_seed_and_summary_over_seeds(cv_seeds):
    import yaml

    out, _ = cv_seeds
    per_seed = [json.loads((out / f"seed{s}" / "summary.json").read_text()) for s in (1, 2)]
    for seed in (1, 2):
        saved = yaml.safe_load((out / f"seed{seed}" / "fold1" / "config.yaml").read_text())
        assert saved["train"]["seed"] == seed
        curves = out / f"seed{seed}" / "fold1" / "learning_curves.png"
        assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["folds"] == [1]
    a, b = (s["ua"]["mean"] for s in per_seed)
    assert summary["ua"]["per_seed"] == [a, b]
    assert summary["ua"]["mean"] == pytest.approx((a + b) / 2)
    assert summary["ua"]["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)  # sample std of two
    assert [r["seed"] for r in summary["per_seed"]] == [1, 2]
    lo, hi = summary["ua"]["ci95"]
    assert 0.0 <= lo <= hi <= 1.0 and "strata = seed x fold" in summary["bootstrap"]["method"]
    report = (out / "report.md").read_text()
    assert f"| mean ± std over seeds | {100 * summary['ua']['mean']:.2f} ± " \
           f"{100 * summary['ua']['std']:.2f} |" in report
    assert f"| 2 | {100 * b:.2f} ± 0.00 |" in report  # one fold: no spread over folds


def test_seeds_rerun_reuses_every_fold_and_says_so_once_per_seed(audio_data, cv_seeds, capsys):
    out, first = cv_seeds
    stamp = (out / "seed2" / "fold1" / "summary.json").stat().st_mtime_ns
    # the first run: every epoch line tagged with its seed and fold, no progress bar redraws
    assert "[seed 1 fold 1] epoch 1/1" in first and "[seed 2 fold 1] epoch 1/1" in first
    assert "\r" not in first
    assert main(["cv", str(audio_data), "--out", str(out), *FAST, "--folds", "1",
                 "--seeds", "1,2"]) == 0
    printed = capsys.readouterr().out
    assert (out / "seed2" / "fold1" / "summary.json").stat().st_mtime_ns == stamp
    lines = [x for x in printed.splitlines() if "already complete" in x]
    assert [x.split("]")[0] for x in lines] == ["[seed 1", "[seed 2"]
    assert "epoch 1/1" not in printed


def test_seeds_refused_into_a_single_seed_folder_and_beside_train_seed(audio_data, cv_one_fold,
                                                                       cv_seeds, caplog):
    assert main(["cv", str(audio_data), "--out", str(cv_one_fold), *FAST, "--folds", "1",
                 "--seeds", "1"]) == 2
    assert "holds a single-seed cross-validation (fold1)" in _errors(caplog)
    caplog.clear()
    assert main(["cv", str(audio_data), "--out", str(cv_seeds[0]), *FAST, "--folds", "1"]) == 2
    assert "holds a cross-validation over seeds (seed1, seed2)" in _errors(caplog)
    caplog.clear()
    assert main(["cv", str(audio_data), "--out", str(cv_seeds[0]), *FAST, "--folds", "1",
                 "--seeds", "1,2", "--set", "train.seed=3"]) == 2
    assert "--seeds and --set train.seed" in _errors(caplog)
    caplog.clear()
    assert main(["cv", str(audio_data), "--out", str(cv_seeds[0]), *FAST, "--seeds", "1,1"]) == 2
    assert "distinct integers" in _errors(caplog)


def test_summarize_seeds_by_hand():
    from foalnet.train.cv import summarize_seeds

    def cv(ua: list[float]) -> dict:
        metric = {"mean": sum(ua) / len(ua), "std": 0.1, "per_fold": ua, "ci95": [0.0, 1.0]}
        return {"folds": [1, 2], "labels": ["a", "b"], "protocol": "p", "ua": metric,
                "wa": metric, "macro_f1": metric, "selected_epochs": [1, 2],
                "pooled": {"confusion": [[1, 0], [0, 1]]}}

    out = summarize_seeds({7: cv([0.4, 0.6]), 3: cv([0.6, 0.8])})
    assert out["seeds"] == [3, 7] and out["ua"]["per_seed"] == [0.7, 0.5]
    assert out["ua"]["mean"] == pytest.approx(0.6)
    assert out["ua"]["std"] == pytest.approx(0.2 / 2 ** 0.5)
    assert out["ua"]["per_seed_fold"] == [[0.6, 0.8], [0.4, 0.6]]
    assert out["pooled"]["confusion"] == [[2, 0], [0, 2]] and out["pooled"]["ua"] == 1.0


# ----------------------------------------------------------------------------- corpus marking, console


def test_ablation_table_marks_the_paper_columns_when_our_corpus_is_not_iemocap(prepared_dir, tmp_path):
    from foalnet.train.ablate import ablation_markdown

    row = {"folds": [1], "labels": ["a"], "protocol": "p", "corpus": "iemocap",
           "data_dir": str(prepared_dir), "ua": {"mean": 0.5, "std": 0.0},
           "wa": {"mean": 0.5, "std": 0.0}}
    synthetic = ablation_markdown({"full": row})  # prepared from `foalnet synth` output
    assert "| UA % (paper, IEMOCAP: OTHER CORPUS) |" in synthetic
    assert "**Different corpus:** our rows are on the synthetic IEMOCAP-shaped corpus" in synthetic
    real = tmp_path / "real"  # an IEMOCAP root without the synth marker
    real.mkdir()
    meta = json.loads((prepared_dir / "prepare.json").read_text())
    meta["options"]["root"] = str(real)
    (real / "prepare.json").write_text(json.dumps(meta))
    table = ablation_markdown({"full": {**row, "data_dir": str(real)}})
    assert "| UA % (paper, IEMOCAP) |" in table and "Different corpus" not in table
    csv_row = ablation_markdown({"full": {**row, "corpus": "csv", "data_dir": None}})
    assert "our rows are on the csv" in csv_row


class _Acc:
    def __init__(self, main: bool = True) -> None:
        self.is_local_main_process = main
        self.device = "cpu"


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_console_tags_and_progress_bars_only_on_a_terminal(capsys):
    from foalnet.train.loop import show_progress_bars, tagged

    acc = tagged(tagged(_Acc(), "full"), "fold 2")
    acc.print("epoch 1/3")
    assert capsys.readouterr().out == "[full fold 2] epoch 1/3\n"
    assert acc.device == "cpu"  # everything else is the wrapped accelerator's
    tagged(_Acc(main=False), "full").print("x")
    assert capsys.readouterr().out == ""
    assert show_progress_bars(_Acc(), _Stream(True)) is True
    assert show_progress_bars(_Acc(), _Stream(False)) is False  # a log file
    assert show_progress_bars(_Acc(main=False), _Stream(True)) is False
    assert show_progress_bars(tagged(_Acc(), "r", progress_bars=False), _Stream(True)) is False
    assert show_progress_bars(tagged(tagged(_Acc(), "r", progress_bars=False), "fold 1"),
                              _Stream(True)) is False  # kept through nested tags


def test_learning_curves_png_leaves_pyplot_alone(tmp_path):
    """Drawn without pyplot (no global backend or figure registry touched), a real PNG."""
    import subprocess
    import sys

    code = ("import sys; from foalnet.train.figures import learning_curves_png\n"
            "h = [{'epoch': '1', 'train_ce': '1.2', 'dev_loss': '1.0', 'dev_ua': '0.4'},\n"
            "     {'epoch': '2', 'train_ce': '0.9', 'dev_loss': 'nan', 'dev_ua': '0.6'}]\n"
            "png = learning_curves_png(h, 2)\n"
            "assert png[:8] == b'\\x89PNG\\r\\n\\x1a\\n', png[:8]\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_paired_difference_with_seeds_pairs_seed_with_seed(tmp_path):
    """Seed 1 of the row misses every `b` item (-0.5 UA against seed 1 of full), seed 2 matches
    full exactly (0): the difference of the means over seeds is -0.25 on every resample."""
    from foalnet.train.ablate import paired_vs_full

    items = [(f"u{i}", "ab"[i % 2]) for i in range(20)]
    for seed in (1, 2):
        _predictions(tmp_path / "full" / f"seed{seed}" / "fold1", [(i, t, t) for i, t in items])
    _predictions(tmp_path / "audio_only" / "seed1" / "fold1", [(i, t, "a") for i, t in items])
    _predictions(tmp_path / "audio_only" / "seed2" / "fold1", [(i, t, t) for i, t in items])
    paired = paired_vs_full(tmp_path, "audio_only", {"folds": [1], "labels": ["a", "b"],
                                                     "seeds": [1, 2]})
    assert (paired["ua_diff"], paired["interval"], paired["items"]) == (-0.25, [-0.25, -0.25], 40)
    assert "strata = seed x fold" in paired["method"]


def test_ablate_seeds_writes_rows_per_seed(audio_data, tmp_path, capsys):
    out = tmp_path / "abl"
    fast = [x for x in FAST if x not in ("--modality", "audio")]
    assert main(["ablate", str(audio_data), "--out", str(out), *fast, "--rows", "audio_only",
                 "--folds", "1", "--seeds", "1,2"]) == 0
    printed = capsys.readouterr().out
    assert "[audio_only seed 2 fold 1] epoch 1/1" in printed
    assert (out / "audio_only" / "seed2" / "fold1" / "summary.json").is_file()
    row = json.loads((out / "ablation.json").read_text())["audio_only"]
    assert row["seeds"] == [1, 2] and len(row["per_seed"]) == 2
    table = (out / "ablation.md").read_text()
    assert "seeds 1, 2" in table and "mean ± std over seeds of the CV means" in table
    assert f"| audio_only | {100 * row['ua']['mean']:.2f} ± {100 * row['ua']['std']:.2f} [" in table
    assert main(["report", str(out)]) == 0  # an ablation over seeds: a seeds section per row
    page = (out / "report.html").read_text()
    assert "audio_only: per seed" in page and page.count("<img ") == 2  # 2 seeds x 1 fold
