"""`foalnet report DIR`: one self-contained HTML file for a run, CV, seeds or ablation folder
and a real headless browser renders it (skipped without chromium)."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from foalnet.cli import main

FAST = ["--preset", "tiny", "--modality", "audio", "--set", "train.batch_size=4",
        "--set", "train.eval_batch_size=8", "--set", "train.epochs=2", "--set", "train.ensemble=1"]


@pytest.fixture(scope="module")
def seeds_dir(prepared_dir, tmp_path_factory) -> Path:
    """`cv --seeds 1,2 --folds 1,2` (audio only, 2 epochs) on a private copy of the tiny corpus."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    shutil.copytree(prepared_dir, data)
    out = root / "cv"
    assert main(["cv", str(data), "--out", str(out), *FAST, "--folds", "1,2", "--seeds", "1,2"]) == 0
    return out


def _render(folder: Path) -> str:
    assert main(["report", str(folder)]) == 0
    return (folder / "report.html").read_text()


def _self_contained(page: str) -> None:
    """Nothing fetched when opened offline: no script, no link, every src a data: URI."""
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(?:src|href)=["'](?!data:)""", page)
    for payload in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"


def test_seeds_report_has_protocol_tables_intervals_speakers_and_curves(seeds_dir):
    page = _render(seeds_dir)
    _self_contained(page)
    summary = json.loads((seeds_dir / "summary.json").read_text())
    ua = summary["ua"]
    assert (f"<td><b>mean ± std over seeds</b></td><td>{100 * ua['mean']:.2f} ± "
            f"{100 * ua['std']:.2f}</td>") in page
    lo, hi = ua["ci95"]
    assert f"[{100 * lo:.2f}, {100 * hi:.2f}]" in page
    assert "the weights of the epoch with the best dev UA (trailing mean over 3 epochs) were " \
           "kept" in page and "Seeds: 1, 2" in page
    assert "synthetic IEMOCAP-shaped corpus" in page
    # per fold of each seed: its test UA as in the fold's own summary
    fold = json.loads((seeds_dir / "seed2" / "fold2" / "summary.json").read_text())
    assert f"<td>2</td><td>{fold['test']['n']}</td><td>{100 * fold['test']['ua']:.2f}</td>" in page
    # per speaker: IEMOCAP folds are sessions, two speakers each
    for speaker in ("Ses01F", "Ses01M", "Ses02F", "Ses02M"):
        assert f"<td>{speaker}</td>" in page
    assert page.count('class="confusion"') == 2 + 4  # pooled per seed, each seed's folds
    assert page.count("<img ") == 4  # 2 seeds x 2 folds


def test_report_of_one_cv_and_of_one_run(seeds_dir, tmp_path):
    cv_page = _render(seeds_dir / "seed1")
    _self_contained(cv_page)
    assert "<h1>Cross-validation</h1>" in cv_page and "95 % CI of the mean" in cv_page
    run_dir = seeds_dir / "seed1" / "fold1"
    run = json.loads((run_dir / "summary.json").read_text())
    page = _render(run_dir)
    _self_contained(page)
    assert "<h1>Training run</h1>" in page and f"<td>{100 * run['test']['ua']:.2f}</td>" in page
    # a run of an older version, without learning_curves.png: drawn from its metrics.csv
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "learning_curves.png").unlink()
    assert main(["report", str(old), "--out", str(tmp_path / "old.html")]) == 0
    assert (tmp_path / "old.html").read_text().count("data:image/png;base64,") == 1


def test_ablation_report_puts_our_rows_beside_the_papers_marked_as_another_corpus(seeds_dir, tmp_path):
    abl = tmp_path / "abl"
    shutil.copytree(seeds_dir / "seed1", abl / "audio_only")
    row = json.loads((abl / "audio_only" / "summary.json").read_text())
    (abl / "ablation.json").write_text(json.dumps({"audio_only": row}))
    page = _render(abl)
    _self_contained(page)
    assert "Different corpus: our rows are on the synthetic IEMOCAP-shaped corpus" in page
    assert "UA % (paper, IEMOCAP: OTHER CORPUS)" in page
    assert '<span class="paper">77.68</span>' in page  # the paper's audio-only UA (spec §6)


def test_report_of_a_folder_without_results_is_a_usage_error(tmp_path, caplog):
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json or ablation.json" in caplog.text
    assert not (tmp_path / "report.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow  # an end-to-end run of its own; CI runs it
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_headless_chromium_renders_the_report(seeds_dir, tmp_path):
    """A real browser lays the page out: the screenshot is not blank, and holds the blue of
    the confusion cells and the coloured curves (the embedded images decoded)."""
    import numpy as np
    from PIL import Image

    page = tmp_path / "page.html"
    page.write_text(_render(seeds_dir))
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,2000", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    rgb = np.asarray(image, dtype=np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    dark = int(((r + g + b) < 200).sum())  # text
    blue = int(((b > r + 40) & (b > 120)).sum())  # confusion cells, curves
    assert dark > 5000 and blue > 2000, (dark, blue)


def test_protocol_words_say_when_there_is_no_dev_split():
    from foalnet.train.report import protocol_words

    cfg = {"train": {"epochs": 30, "ensemble": 5, "select_metric": "ua"}, "data": {"dev_speakers": 0},
           "model": {"modality": "audio"}}
    words = protocol_words(cfg, {"data_dir": None, "folds": [1]})
    assert "no dev split" in words and "weights after the last epoch were kept" in words
    assert "ensemble of 5" in words and "selected epoch" not in words
    with_dev = protocol_words({**cfg, "data": {"dev_speakers": 2}}, {"data_dir": None, "folds": [1]})
    assert "2 held-out speaker(s)" in with_dev and "its own dev speakers and selected epoch" in with_dev
