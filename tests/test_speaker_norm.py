"""Speaker-level normalisation of cached front-end features, eGeMAPS LLD frames, train.min_steps."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from foalnet.config import TrainConfig, preset
from foalnet.features.speaker_norm import POOLED, normalise, pooled_statistics, speaker_statistics
from foalnet.model.audio_offline import EGEMAPS_LLD_SCALE, OfflineAudioEncoder, egemaps_llds
from foalnet.train.data import EmotionDataset
from foalnet.train.run import train_epochs


class FakeStore:
    """The two methods speaker_statistics and EmotionDataset read of an AudioFrontendStore."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def has(self, utt_id: str) -> bool:
        return utt_id in self.arrays

    def load(self, utt_id: str) -> np.ndarray:
        return self.arrays[utt_id]


def records(*rows: tuple[str, str | None]) -> list[dict]:
    return [{"id": i, "speaker": s, "label": "neu"} for i, s in rows]


STORE = FakeStore({
    "a1": np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32),  # speaker A: frames 1, 3, 5 / 5, 5, 5
    "a2": np.array([[5.0, 5.0]], dtype=np.float32),
    "b1": np.array([[10.0, 0.0], [20.0, 2.0]], dtype=np.float32),  # speaker B: 10, 20 / 0, 2
    "e1": np.zeros((0, 2), dtype=np.float32),  # no frame: skipped
})


def test_speaker_statistics_pool_all_frames_of_a_speaker() -> None:
    stats = speaker_statistics(STORE, records(("a1", "A"), ("a2", "A"), ("b1", "B"), ("e1", "C"),
                                              ("missing", "A")))
    assert set(stats) == {"A", "B"}  # C has no frame; an id the store lacks is skipped
    mean_a, std_a = stats["A"]
    np.testing.assert_allclose(mean_a, [3.0, 5.0])
    np.testing.assert_allclose(std_a, [math.sqrt(8 / 3), 1.0])  # constant channel: divided by 1
    np.testing.assert_allclose(stats["B"][0], [15.0, 1.0])
    np.testing.assert_allclose(stats["B"][1], [5.0, 1.0])
    mean, std = pooled_statistics(stats, ["A", "B", "A", "nobody"])
    np.testing.assert_allclose(mean, [9.0, 3.0])
    np.testing.assert_allclose(std, [math.sqrt((8 / 3 + 25) / 2), 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="no speaker"):
        pooled_statistics(stats, ["nobody"])


def test_dataset_normalises_per_speaker_and_falls_back_to_pooled() -> None:
    stats = speaker_statistics(STORE, records(("a1", "A"), ("a2", "A"), ("b1", "B")))
    stats[POOLED] = (np.array([0.0, 1.0], np.float32), np.array([2.0, 4.0], np.float32))
    data = EmotionDataset([*records(("a1", "A"), ("b1", "B")), {"id": "a2", "speaker": None, "label": "neu"}],
                          ["neu"], use_video=False, audio_store=STORE, audio_norm=stats)
    a1, b1, unknown = data[0].audio_features, data[1].audio_features, data[2].audio_features
    np.testing.assert_allclose(a1, [[-2 / math.sqrt(8 / 3), 0.0], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(b1, [[-1.0, -1.0], [1.0, 1.0]])
    np.testing.assert_allclose(unknown, [[2.5, 1.0]])  # (5 - 0) / 2, (5 - 1) / 4
    plain = EmotionDataset(records(("a1", "A")), ["neu"], use_video=False, audio_store=STORE)
    np.testing.assert_array_equal(plain[0].audio_features, STORE.arrays["a1"])  # off by default
    np.testing.assert_allclose(normalise(np.ones((1, 2)), np.ones(2), np.ones(2)), [[0.0, 0.0]])


def test_encoder_waveform_path_uses_the_kept_pooled_statistics() -> None:
    torch.manual_seed(0)
    enc = OfflineAudioEncoder(hidden_size=16, speaker_norm=True).eval()
    width = enc.front_end.num_features
    mean, std = torch.linspace(-1, 1, width), torch.linspace(0.5, 2.0, width)
    enc.set_speaker_fallback(mean.numpy(), std.numpy())
    wave = torch.randn(2, 4000) * 0.1
    mask = torch.ones(2, 4000, dtype=torch.bool)
    mask[1, 2000:] = False
    feats, fmask = enc.frontend(wave, mask)
    expected = enc.encode_frontend((feats - mean) / std * fmask.unsqueeze(-1), fmask)
    got = enc(wave, mask)
    torch.testing.assert_close(got[0], expected[0])
    assert not torch.allclose(got[0], enc.encode_frontend(feats, fmask)[0])
    assert "norm_mean" in enc.state_dict() and "norm_std" in enc.state_dict()  # saved with the weights
    assert "speaker_norm" not in enc.frontend_fingerprint()  # the cache holds raw features
    with pytest.raises(ValueError, match="without speaker_norm"):
        OfflineAudioEncoder(hidden_size=16).set_speaker_fallback(mean, std)


def test_egemaps_llds_on_the_dsp_frame_grid() -> None:
    pytest.importorskip("opensmile")
    t = torch.arange(16000) / 16000
    wave = torch.stack([0.3 * torch.sin(2 * math.pi * 200 * t), torch.zeros(16000)])
    samples = torch.tensor([16000, 8000])
    frames = torch.tensor([100, 50])  # ceil(samples / 160)
    out = egemaps_llds(wave, frames, 100, samples)
    assert out.shape == (2, 100, len(EGEMAPS_LLD_SCALE)) and torch.isfinite(out).all()
    assert (out[1, 50:] == 0).all()  # beyond the row's valid frames
    alone = egemaps_llds(wave[:1, :16000], frames[:1], 100, samples[:1])
    torch.testing.assert_close(out[:1], alone)  # a row does not depend on the others
    f0 = [name for name, _, _ in EGEMAPS_LLD_SCALE].index("F0semitoneFrom27.5Hz_sma3nz")
    offset, scale = EGEMAPS_LLD_SCALE[f0][1:]
    semitones = out[0, 20:80, f0] * scale + offset  # 200 Hz = 12 log2(200 / 27.5) = 34.4 st
    assert abs(float(semitones.median()) - 12 * math.log2(200 / 27.5)) < 0.5
    short = egemaps_llds(torch.zeros(1, 500), torch.tensor([4]), 4, torch.tensor([500]))
    assert (short == 0).all()  # too short for openSMILE's windows: zeros, no error


def test_egemaps_option_changes_the_cache_key_only_when_on() -> None:
    pytest.importorskip("opensmile")
    plain, with_lld = OfflineAudioEncoder(), OfflineAudioEncoder(egemaps=True)
    assert "egemaps" not in plain.frontend_fingerprint()  # caches made before stay valid
    assert with_lld.frontend_fingerprint()["egemaps"]["opensmile"]
    only = OfflineAudioEncoder(egemaps=True, use_mel=False, use_prosody=False)
    assert only.front_end.num_features == 25 and with_lld.front_end.num_features == 40 + 8 + 25
    with pytest.raises(ValueError, match="all False"):
        OfflineAudioEncoder(use_mel=False, use_prosody=False)


@pytest.mark.parametrize("epochs, min_steps, per_epoch, expected", [
    (30, 0, 4, 30), (30, 400, 4, 100), (30, 400, 14, 30), (30, 400, 3, 134), (30, 400, 0, 400),
])
def test_min_steps_adds_epochs_for_small_corpora(epochs, min_steps, per_epoch, expected) -> None:
    train = SimpleNamespace(epochs=epochs, min_steps=min_steps)
    assert train_epochs(train, per_epoch) == expected


def test_min_steps_is_validated() -> None:
    with pytest.raises(ValueError, match="min_steps"):
        TrainConfig(min_steps=-1)
    assert TrainConfig().min_steps == 0  # the paper recipe: a fixed epoch count


def test_an_explicit_epoch_count_is_trained_as_asked() -> None:
    tiny = preset("tiny")
    assert tiny.train.min_steps == 300 and tiny.train.epochs == 30
    assert tiny.override(["train.epochs=2"]).train.min_steps == 0  # --set train.epochs=2: 2 epochs
    both = tiny.override(["train.epochs=2", "train.min_steps=50"]).train
    assert (both.epochs, both.min_steps) == (2, 50)
    assert tiny.override(["train.lr=0.01"]).train.min_steps == 300


def test_speaker_norm_needs_the_audio_cache() -> None:
    from foalnet.train.run import speaker_norm_statistics

    model = SimpleNamespace(uses_audio=True, audio_encoder=OfflineAudioEncoder(hidden_size=16, speaker_norm=True))
    fold = SimpleNamespace(train=[], dev=[], test=[])
    with pytest.raises(ValueError, match="cache_audio"):
        speaker_norm_statistics(fold, model, None)
    plain = SimpleNamespace(uses_audio=True, audio_encoder=OfflineAudioEncoder(hidden_size=16))
    assert speaker_norm_statistics(fold, plain, None) is None


def test_training_statistics_come_from_each_split_and_the_pool_from_training_speakers() -> None:
    from foalnet.train.run import FoldData, speaker_norm_statistics

    enc = OfflineAudioEncoder(hidden_size=16, speaker_norm=True)
    store = FakeStore({"a1": np.full((2, enc.input_proj.in_channels), 1.0, np.float32),
                       "b1": np.full((1, enc.input_proj.in_channels), 3.0, np.float32),
                       "a1@speed0.9": np.full((1, enc.input_proj.in_channels), 50.0, np.float32),
                       "t1": np.full((1, enc.input_proj.in_channels), 9.0, np.float32)})
    train = records(("a1", "A"), ("b1", "B"), ("a1@speed0.9", "A@speed0.9"))  # a speed-perturbed copy last
    fold = FoldData(train, [], records(("t1", "T")), ["neu"], "", None, speed_copies=1)
    stats = speaker_norm_statistics(fold, SimpleNamespace(uses_audio=True, audio_encoder=enc), store)
    assert set(stats) == {"A", "B", "A@speed0.9", "T", POOLED}
    np.testing.assert_allclose(stats["A@speed0.9"][0], 50.0)  # the copy is z-scored as its own speaker
    # the pool: mean of A's 1 and B's 3; T is a test speaker, the copy not a real training speaker
    np.testing.assert_allclose(stats[POOLED][0], 2.0)
    torch.testing.assert_close(enc.norm_mean, torch.full_like(enc.norm_mean, 2.0))  # kept for predict


def test_the_protocol_line_says_when_test_speakers_statistics_are_used():
    """Speaker z-scoring uses the test speakers' own unlabelled clips: every summary says so."""
    from foalnet.config import preset
    from foalnet.train.run import speaker_norm_note

    tiny = preset("tiny")
    assert "test speakers included" in speaker_norm_note(tiny)
    assert speaker_norm_note(preset("paper")) == ""
    off = tiny.override(["model.audio_options={attention_heads: 4, egemaps: true, use_mel: false, "
                         "use_prosody: false, speaker_norm: false}"])
    assert speaker_norm_note(off) == ""
    assert speaker_norm_note(tiny.override(["model.modality=video", "model.use_avel=false", "model.use_mem=false"])) == ""
