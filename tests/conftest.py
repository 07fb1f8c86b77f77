"""Shared fixtures: one tiny synthetic IEMOCAP release and its prepared DATA_DIR per session.

Other test files reuse ``synth_root`` and ``prepared_dir``; treat both as read-only (copy them
to tmp_path before modifying anything).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

CORPUS_ENV = "FOALNET_IEMOCAP_ROOT"
# pytest-xdist hands files to its workers in this order (`make test`: --no-loadscope-reorder), the
# longest first, so that no worker ends on a long file alone (pytest --durations=0, 2 cores):
# test_serve builds the shared trained run that test_predict, scheduled later, then reuses
FIRST = ("test_serve.py", "test_benchmarks.py", "test_distributed.py", "test_mixed_precision.py",
         "test_resume.py", "test_cv.py")
LAST = ("test_predict.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST) + (name in LAST)

    items.sort(key=rank)  # stable: the usual order within a rank


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills, made once per test run: under pytest-xdist the first worker
    builds it in the run's common temp folder while the others wait on a file lock, then all
    reuse it (the recipe of pytest-xdist's docs). Callers treat it as read-only."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IEMOCAP_full_release written by ``foalnet synth --size tiny --seed 0`` (about 2 s)."""
    from foalnet.data.synth import generate

    out = built_once(tmp_path_factory, "synth", lambda folder: generate(folder, seed=0, size="tiny", workers=1))
    return out / "IEMOCAP_full_release"


@pytest.fixture(scope="session")
def prepared_dir(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA_DIR of ``foalnet prepare iemocap`` on ``synth_root`` (classes "4")."""
    from foalnet.cli import main

    def build(folder: Path) -> None:
        assert main(["prepare", "iemocap", str(synth_root), "--out", str(folder / "data")]) == 0

    return built_once(tmp_path_factory, "prepared", build) / "data"


@pytest.fixture(scope="session")
def visual_dir(prepared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepared_dir`` with tiny visual features (``extract-visual --encoder tiny``), extracted
    once per session; read-only like ``prepared_dir``."""
    from foalnet.cli import main

    def build(folder: Path) -> None:
        shutil.copytree(prepared_dir, folder / "data")
        assert main(["extract-visual", str(folder / "data"), "--encoder", "tiny", "--no-progress"]) == 0

    return built_once(tmp_path_factory, "visual", build) / "data"


@pytest.fixture(scope="session")
def trained_run(visual_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN_DIR of ``foalnet train`` (tiny preset, fold 1, one epoch, batch 4) on a private copy
    of ``visual_dir`` (training writes its audio cache there); read-only."""
    from foalnet.cli import main

    def build(root: Path) -> None:
        data, run = root / "data", root / "run"
        shutil.copytree(visual_dir, data)
        # speaker_norm off: training normalises test clips with their speaker's statistics, predict
        # (no speaker) with the pooled ones, and test_predict checks predict == predictions.csv
        assert main(["train", str(data), "--fold", "1", "--out", str(run), "--preset", "tiny",
                     "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "train.ensemble=1",
                     "--set", "model.audio_options={attention_heads: 4, egemaps: true, use_mel: false, use_prosody: false}"]) == 0

    return built_once(tmp_path_factory, "trained", build) / "run"


@pytest.fixture(scope="session")
def iemocap_root() -> Path:
    """The real IEMOCAP_full_release (tests marked ``corpus`` are skipped without it)."""
    root = os.environ.get(CORPUS_ENV)
    if not root:
        pytest.skip(f"set {CORPUS_ENV} to the IEMOCAP_full_release folder")
    return Path(root)
