"""Speed perturbation of the training clips (data.speed_perturb): the signal change, the copies'
records, their cache keys, the epoch length, and a training run that uses them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from foalnet.cli import main
from foalnet.config import DataConfig
from foalnet.data.audio import change_speed
from foalnet.data.protocol import speed_copies
from foalnet.features.audio_cache import item_key
from foalnet.train.data import BalancedSampler


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_change_scales_duration_and_pitch(factor):
    rate = 16000
    t = np.arange(2 * rate) / rate
    tone = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    out = change_speed(tone, rate, factor)
    assert out.dtype == np.float32
    assert abs(len(out) - 2 * rate / factor) <= 2  # 2 s / factor
    assert peak_hz(out, rate) == pytest.approx(200 * factor, abs=1.0)  # 180 / 220 Hz


def test_copies_are_new_speakers_of_the_same_clips():
    records = [{"id": "a", "speaker": "s1", "label": "neu", "wav": "a.wav", "fold": 1},
               {"id": "b", "speaker": None, "label": "ang", "wav": "b.wav", "fold": 1}]
    copies = speed_copies(records, [0.9, 1.1])
    assert [c["id"] for c in copies] == ["a@speed0.9", "b@speed0.9", "a@speed1.1", "b@speed1.1"]
    assert [c["speaker"] for c in copies] == ["s1@speed0.9", None, "s1@speed1.1", None]
    assert [c["speed"] for c in copies] == [0.9, 0.9, 1.1, 1.1]
    assert all(c["copy_of"] == r["id"] and c["label"] == r["label"] and c["wav"] == r["wav"]
               for c, r in zip(copies, records * 2))
    assert "speed" not in records[0]  # the originals are untouched


def test_a_copy_has_its_own_cache_key_and_originals_keep_theirs(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    record = {"id": "a", "wav": str(wav)}
    plain = item_key(record, "h")
    assert item_key({**record, "speed": None}, "h") == plain  # caches made before stay valid
    assert item_key({**record, "speed": 0.9}, "h") not in (plain, item_key({**record, "speed": 1.1}, "h"))


def test_an_epoch_draws_the_originals_count():
    sampler = BalancedSampler([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1], seed=3, draws=4)
    assert len(sampler) == 4 and len(sampler.indices()) == 4
    assert len(BalancedSampler([0, 1, 1], seed=3)) == 3
    assert len(BalancedSampler([0, 1, 1, 0], seed=3, balanced=False, draws=2).indices()) == 2


@pytest.mark.parametrize("factors", [[1.0], [0.9, 0.9], [3.0]])
def test_bad_factors_are_named(factors):
    with pytest.raises(ValueError, match="speed_perturb"):
        DataConfig(speed_perturb=factors)


def test_a_run_trains_on_the_copies_and_tests_on_the_originals(prepared_dir, tmp_path):
    pytest.importorskip("opensmile")
    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data)  # the run fills the data folder's audio cache
    out = tmp_path / "run"
    assert main(["train", str(data), "--fold", "1", "--out", str(out), "--preset", "tiny", "--modality", "audio",
                 "--set", "train.epochs=2", "--set", "train.ensemble=1", "--set", "train.min_steps=0",
                 "--set", "data.speed_perturb=[0.9, 1.1]"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speed_copies"] == 2 * summary["train_items"]
    assert "speed-perturbed (factors 0.9, 1.1" in summary["protocol"]
    predicted = (out / "predictions.csv").read_text()
    assert "@speed" not in predicted and summary["test"]["n"] == summary["test_items"]
    index = [json.loads(line) for path in (data / "audio_frontend").glob("*/index.jsonl")
             for line in path.read_text().splitlines()]
    ids = {row["id"] for row in index}
    manifest = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    train_ids = [r["id"] for r in manifest if int(r["fold"]) != 1]
    assert summary["train_items"] + summary["dev_items"] == len(train_ids)
    assert sum(f"{i}@speed0.9" in ids for i in train_ids) == summary["train_items"]  # dev and test: no copies


def test_run_and_cv_protocol_lines_name_the_factors():
    from foalnet.config import preset
    from foalnet.train.run import protocol_notes

    cfg = preset("tiny").override(["data.speed_perturb=[0.9, 1.1]"])
    assert protocol_notes(cfg).startswith("; training clips speed-perturbed (factors 0.9, 1.1: one copy each")
    assert "speed-perturbed" not in protocol_notes(preset("tiny"))
