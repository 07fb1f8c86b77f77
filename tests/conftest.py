"""Shared fixtures: one tiny synthetic IEMOCAP release and its prepared DATA_DIR per session.

Other test files reuse ``synth_root`` and ``prepared_dir``; treat both as read-only (copy them
to tmp_path before modifying anything).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CORPUS_ENV = "FOALNET_IEMOCAP_ROOT"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IEMOCAP_full_release written by ``foalnet synth --size tiny --seed 0`` (about 2 s)."""
    from foalnet.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, seed=0, size="tiny", workers=1)
    return Path(summary["root"])


@pytest.fixture(scope="session")
def prepared_dir(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA_DIR of ``foalnet prepare iemocap`` on ``synth_root`` (classes "4")."""
    from foalnet.cli import main

    out = tmp_path_factory.mktemp("prepared") / "data"
    assert main(["prepare", "iemocap", str(synth_root), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def visual_dir(prepared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepared_dir`` with tiny visual features (``extract-visual --encoder tiny``), extracted
    once per session; read-only like ``prepared_dir``."""
    from foalnet.cli import main

    out = tmp_path_factory.mktemp("visual") / "data"
    shutil.copytree(prepared_dir, out)
    assert main(["extract-visual", str(out), "--encoder", "tiny", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def trained_run(visual_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN_DIR of ``foalnet train`` (tiny preset, fold 1, one epoch, batch 4) on a private copy
    of ``visual_dir`` (training writes its audio cache there); read-only."""
    from foalnet.cli import main

    root = tmp_path_factory.mktemp("trained")
    data, run = root / "data", root / "run"
    shutil.copytree(visual_dir, data)
    # speaker_norm off: training normalises test clips with their speaker's statistics, predict
    # (no speaker) with the pooled ones, and test_predict checks predict == predictions.csv
    assert main(["train", str(data), "--fold", "1", "--out", str(run), "--preset", "tiny",
                 "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set",
                 "model.audio_options={attention_heads: 4, egemaps: true, use_mel: false, use_prosody: false}"]) == 0
    return run


@pytest.fixture(scope="session")
def iemocap_root() -> Path:
    """The real IEMOCAP_full_release (tests marked ``corpus`` are skipped without it)."""
    root = os.environ.get(CORPUS_ENV)
    if not root:
        pytest.skip(f"set {CORPUS_ENV} to the IEMOCAP_full_release folder")
    return Path(root)
