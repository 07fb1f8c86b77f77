"""Data parallel on CPU: ``accelerate launch --multi_gpu --num_processes 2`` -> 2 gloo processes.

accelerate 1.15 (commands/launch.py ``launch_command``): ``--cpu`` always goes to the simple
launcher, which starts N processes only through mpirun (``--mpirun_hostfile``) and otherwise ONE
process (N is not passed on, so foalnet cannot re-spawn; it warns instead, see the last test);
``--multi_gpu --cpu`` is refused ("only one of --cpu, --multi_gpu ..."). ``--multi_gpu`` without
``--cpu`` uses torchrun, and on a machine without GPUs ``Accelerator`` then runs MULTI_CPU over
gloo. ``torchrun --nproc_per_node 2 -m foalnet train ...`` is equivalent.

One launch (each starts two interpreters that import torch, so they are few) checks three things:
``extract-audio`` splits the manifest over the 2 processes (one index, arrays equal to one process's);
the AVEL loss with the "j" side gathered from both processes, averaged over processes, equals the
single-process AVEL on the same global batch; ``foalnet train`` runs data-parallel (each process
takes every other batch), reuses that audio cache and writes a complete run folder. A second launch
kills one ``extract-visual`` process: nothing it wrote is lost, and a rerun does the rest.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_train import make_visual_data  # noqa: E402  (tests/ is on sys.path)

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from accelerate import Accelerator

    sys.path.insert(0, sys.argv[3])
    from test_distributed import global_batch, tiny_model

    from foalnet.cli import main

    out_dir, data_dir = sys.argv[1], sys.argv[2]
    acc = Accelerator(cpu=True)  # first: the extraction then meets in its process group (one per process)
    if main(["extract-audio", data_dir, "--preset", "tiny", "--no-progress"]) != 0:
        sys.exit(1)
    model = tiny_model()
    batch = global_batch()
    B, n, r = len(batch["labels"]), acc.num_processes, acc.process_index
    part = {k: v[r * B // n:(r + 1) * B // n] for k, v in batch.items()}
    with torch.no_grad():
        local = model(**part).losses["avel"]
    gathered = acc.gather(local.reshape(1))
    if acc.is_main_process:
        json.dump({"avel": gathered.mean().item(), "world": n, "type": str(acc.distributed_type),
                   "backend": acc.state.backend}, open(out_dir + "/avel.json", "w"))
    acc.wait_for_everyone()
    sys.exit(main(["train", data_dir, "--fold", "1", "--out", out_dir + "/run", "--preset", "tiny",
                   "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "train.ensemble=1"]))
    """
)


def tiny_model():
    """The same small FoalNet in every process (seeded init), in eval mode (no dropout)."""
    from foalnet.model.foalnet import FoalNet, FoalNetConfig

    torch.manual_seed(0)
    return FoalNet(FoalNetConfig.tiny(video_dim=16, proj_dim=8)).eval()


def global_batch() -> dict:
    """8 items with padding and repeated labels (multi-positive AVEL targets)."""
    gen = torch.Generator().manual_seed(1)
    B, S, T, D = 8, 4000, 10, 16
    lengths = torch.tensor([4000, 3000, 2500, 4000, 1800, 3600, 4000, 2200])
    frames = torch.tensor([10, 7, 9, 4, 10, 6, 8, 5])
    return {
        "waveform": torch.randn(B, S, generator=gen) * 0.1,
        "waveform_mask": torch.arange(S)[None] < lengths[:, None],
        "video": torch.randn(B, T, D, generator=gen),
        "video_mask": torch.arange(T)[None] < frames[:, None],
        "labels": torch.tensor([0, 1, 2, 3, 0, 1, 1, 2]),
    }


@pytest.fixture(scope="module")
def data_dir(visual_dir, tmp_path_factory) -> Path:
    return make_visual_data(Path(visual_dir), tmp_path_factory.mktemp("ddp") / "data")


@pytest.fixture(scope="module")
def launched(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``accelerate launch --num_processes 2`` of WORKER (every launch starts two interpreters
    that import torch): ``extract-audio`` of data_dir, the gathered AVEL, then ``foalnet train``."""
    out = tmp_path_factory.mktemp("launch")
    script = out / "worker.py"
    script.write_text(WORKER)
    return out, _launch([str(out), str(data_dir), str(Path(__file__).parent)], script)


@pytest.mark.slow  # an end-to-end run of its own; CI runs it
def test_accelerate_launch_two_cpu_processes(launched, data_dir):
    from foalnet.config import preset
    from foalnet.train.run import load_fold

    tmp_path, proc = launched
    assert proc.returncode == 0, proc.stderr[-3000:]

    # (1) gathered AVEL == single-process AVEL on the same global batch
    result = json.loads((tmp_path / "avel.json").read_text())
    assert result["world"] == 2 and result["backend"] == "gloo" and "MULTI_CPU" in result["type"]
    with torch.no_grad():
        single = tiny_model()(**global_batch()).losses["avel"].item()
    assert result["avel"] == pytest.approx(single, rel=1e-5, abs=1e-6)

    # (2) data-parallel training: half the steps per epoch, complete outputs
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["test"]["ua"] <= 1.0
    cfg = preset("tiny").override([f"data.data_dir={data_dir}", "data.fold=1"])
    n_train = len(load_fold(cfg).train)
    steps = int((run / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    assert steps == math.ceil(math.ceil(n_train / 4) / 2)
    assert (run / "best" / "model.safetensors").is_file()
    assert not (run / "checkpoints").exists() and not (run / "last").exists()  # complete: best/ only


def test_single_process_cpu_launch_is_detected():
    """``accelerate launch --cpu --num_processes 2`` env (one process) -> warning naming the fix."""
    from foalnet.train.run import single_process_cpu_launch

    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    message = single_process_cpu_launch(simple)
    assert message and "--multi_gpu --num_processes N" in message and "torchrun" in message
    assert single_process_cpu_launch({**simple, "WORLD_SIZE": "2"}) is None  # torchrun / --multi_gpu
    assert single_process_cpu_launch({**simple, "OMPI_COMM_WORLD_SIZE": "2"}) is None  # mpirun
    assert single_process_cpu_launch({"ACCELERATE_USE_CPU": "True"}) is None  # --num_processes 1
    assert single_process_cpu_launch({}) is None  # plain `foalnet train`


# ----------------------------------------------------------------------------- extraction


DIE_AFTER = textwrap.dedent(
    """
    import os, sys
    from foalnet.features import store

    put, done = store.FeatureStore.put, []

    def dying_put(self, *args, **kwargs):  # process 1 dies (like a kill) after its 3rd item
        path = put(self, *args, **kwargs)
        done.append(path)
        if os.environ["RANK"] == "1" and len(done) == 3:
            os._exit(17)
        return path

    store.FeatureStore.put = dying_put
    from foalnet.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _launch(args: list[str], script: Path | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes 2 -m foalnet ARGS`` (or the script) on 2 gloo CPU processes."""
    target = [str(script)] if script else ["-m", "foalnet"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM: torchrun's agent stops its workers (each in a session of its own, which a
        # SIGKILL of the launcher would leave running), then the launcher exits
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"accelerate launch timed out after 300 s; its output ended with:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _fresh_copy(prepared_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(prepared_dir, dest, ignore=shutil.ignore_patterns("visual", "audio_frontend"))
    return dest


def _store_files(root: Path) -> dict[str, tuple[int, int]]:
    """Array file -> (inode, mtime_ns): a file written again gets another inode (temp + rename)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / "arrays").glob("*.npy")}


def _index_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines() if line.strip()]


def assert_one_index_equal_to(store, reference, ids: list[str], rtol: float = 0.0) -> None:
    """Every item once in one index.jsonl (no shard left), one array each, equal to the reference's
    (``rtol``: float16 rounding where the items were batched differently)."""
    import numpy as np

    assert sorted(e["id"] for e in _index_lines(store.root)) == ids
    assert not list(store.root.glob("index.r*.jsonl"))
    assert len(_store_files(store.root)) == len(ids)
    for utt in ids:
        np.testing.assert_allclose(store.load(utt), reference.load(utt), rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.slow  # an end-to-end run of its own; CI runs it
def test_extraction_split_over_two_processes_gives_one_index(launched, data_dir, prepared_dir, tmp_path):
    """extract-audio under ``accelerate launch --num_processes 2`` (the launch above, before it
    trains): one merged report, every item once in one index, arrays identical to a
    single-process extraction, all reused by the training (extract-visual: the test below)."""
    import re

    from foalnet.cli import main
    from foalnet.data.manifest import read_manifest
    from foalnet.features.store import AudioFrontendStore

    proc = launched[1]
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = sorted(r["id"] for r in read_manifest(data_dir))
    reports = [tuple(map(int, m)) for m in re.findall(r"audio front end \S+: done (\d+), reused (\d+)", proc.stdout)]
    # one merged report per command, printed by the main process: the extraction, then training's check
    assert reports == [(len(ids), 0), (0, len(ids))], proc.stdout[-2000:]
    single = _fresh_copy(Path(prepared_dir), tmp_path / "single")
    assert main(["extract-audio", str(single), "--preset", "tiny", "--no-progress"]) == 0
    assert_one_index_equal_to(AudioFrontendStore.open(data_dir), AudioFrontendStore.open(single), ids)


@pytest.mark.slow  # an end-to-end run of its own; CI runs it
def test_a_dead_extraction_process_loses_nothing_and_the_rerun_does_the_rest(prepared_dir, data_dir, tmp_path,
                                                                            capsys):
    """Process 1 of 2 dies after 3 items: what both processes wrote is complete and listed; a
    rerun (here one process: the count may change between runs) folds the dead run's index
    shards in, reuses all of it, writes no array twice and computes only the missing."""
    import re

    from foalnet.cli import main
    from foalnet.data.manifest import read_manifest
    from foalnet.features.store import VisualFeatureStore

    data = _fresh_copy(Path(prepared_dir), tmp_path / "data")
    script = tmp_path / "dying.py"
    script.write_text(DIE_AFTER)
    args = ["extract-visual", str(data), "--encoder", "tiny", "--no-progress"]
    assert _launch(args, script).returncode != 0
    store = VisualFeatureStore.open(data)
    before = _store_files(store.root)
    listed = set(store.ids)
    assert 3 <= len(listed) < len(read_manifest(data))
    assert all(store.has(utt) for utt in listed)  # every listed item has its array
    assert len(before) == len(listed)  # and no array without its index line

    capsys.readouterr()
    assert main(args) == 0
    done, reused = map(int, re.search(r"done (\d+), reused (\d+)", capsys.readouterr().out).groups())
    ids = sorted(r["id"] for r in read_manifest(data))
    assert reused == len(listed) and done == len(ids) - len(listed)
    after = _store_files(store.root)
    assert all(after[name] == stamp for name, stamp in before.items())  # none written again
    # one index of every item, arrays equal to a single-process extraction (data_dir's) up to
    # float16 rounding: the rerun batches only the missing items, so GEMM blocking differs
    assert_one_index_equal_to(VisualFeatureStore.open(data), VisualFeatureStore.open(data_dir), ids, rtol=2e-3)
