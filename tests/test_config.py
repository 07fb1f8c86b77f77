"""ExperimentConfig: paper preset values, YAML round trip, --set coercion, validation errors."""
from __future__ import annotations

import pytest

from foalnet.config import MISSING, DataConfig, ExperimentConfig, TrainConfig, preset


def test_paper_preset_is_spec_section_2():
    cfg = preset("paper")
    t = cfg.train
    assert (t.lr, t.weight_decay, t.betas, t.eps) == (1e-4, 0.01, [0.9, 0.999], 1e-8)
    assert (t.batch_size, t.epochs, t.seed) == (16, 40, 1234)
    assert t.schedule == "constant" and t.balanced_sampling and t.grad_accum == 1
    assert t.mixed_precision == "auto"  # fp16 on GPU, full precision on CPU
    assert cfg.model.max_audio_seconds == 6.0 and cfg.model.max_video_frames == 180
    assert cfg.model.use_avel and cfg.model.use_mem and cfg.model.modality == "av"
    assert cfg.data.select_on_test is False  # our protocol selects on dev by default


def test_required_path_is_missing_not_a_home_default():
    cfg = preset("tiny")
    assert cfg.data.data_dir == MISSING
    with pytest.raises(ValueError, match="data.data_dir"):
        cfg.check_complete()


def test_yaml_round_trip(tmp_path):
    cfg = preset("tiny").override(["data.data_dir=/x/y", "data.fold=3", "train.lr=3e-4",
                                   "model.labels=[a, b, c]"])
    cfg.save_yaml(tmp_path / "c.yaml", extra={"git": "abc"})
    back = ExperimentConfig.load_yaml(tmp_path / "c.yaml")
    assert back.to_dict() == cfg.to_dict()
    assert back.model.labels == ["a", "b", "c"] and back.data.fold == 3


def test_saves_go_through_the_one_shared_atomic_writer(tmp_path, monkeypatch):
    """config.py and train/checkpoint.py keep no private copy of the atomic writer."""
    import foalnet.config
    import foalnet.data.files as files
    import foalnet.train.checkpoint as checkpoint

    written = []
    real = files.write_text_atomic
    monkeypatch.setattr(files, "write_text_atomic", lambda p, t: (written.append(p), real(p, t)))
    target = tmp_path / "new" / "run" / "config.yaml"  # parent folders are created
    preset("tiny").save_yaml(target)
    assert written == [target] and ExperimentConfig.load_yaml(target).to_dict() == preset("tiny").to_dict()
    assert [x.name for x in target.parent.iterdir()] == ["config.yaml"]  # no temp file left
    assert checkpoint.write_text_atomic is real
    assert not [n for n in vars(foalnet.config) if "atomic" in n and n != "write_text_atomic"]


def test_override_coerces_to_field_types():
    cfg = preset("tiny").override([
        "train.lr=0.0003", "train.epochs=5", "train.balanced_sampling=false", "data.fold=2",
        "train.betas=[0.8, 0.99]", "model.audio_options={hidden_size: 32}", "model.use_mem=no",
        "data.visual_encoder=tiny",
    ])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.train.balanced_sampling is False and cfg.model.use_mem is False
    assert cfg.data.fold == 2 and cfg.train.betas == [0.8, 0.99]
    assert cfg.model.audio_options == {"hidden_size": 32}
    assert preset("tiny").override(["data.fold=null"]).data.fold is None


@pytest.mark.parametrize("assignment, needle", [
    ("train.epochs=abc", "train.epochs='abc' is not an integer"),
    ("train.nope=1", "no field 'nope'"),
    ("oops.lr=1", "model.X, data.X or train.X"),
    ("train.lr", "expected key=value"),
    ("train.lr=-1", "lr=-1.0 must be > 0"),
    ("train.schedule=linear", "schedule='linear'"),
    ("train.balanced_sampling=maybe", "not a boolean"),
    ("model.modality=smell", "modality='smell'"),
])
def test_bad_overrides_name_the_value(assignment, needle):
    with pytest.raises(ValueError) as err:
        preset("tiny").override([assignment])
    assert needle in str(err.value)


def test_validation_names_every_bad_value():
    with pytest.raises(ValueError) as err:
        TrainConfig(batch_size=0, mixed_precision="fp8")
    assert "batch_size=0" in str(err.value) and "mixed_precision='fp8'" in str(err.value)
    with pytest.raises(ValueError, match="dev_speakers=-1"):
        DataConfig(dev_speakers=-1)
    assert DataConfig(dev_speakers=0).dev_speakers == 0  # no dev split: the last epoch is kept


def test_unknown_yaml_keys_rejected(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        ExperimentConfig.load_yaml(tmp_path / "c.yaml")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
