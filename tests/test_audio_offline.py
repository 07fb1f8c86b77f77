"""OfflineAudioEncoder: shapes, padding invariance, empty input, gradients, front-end values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from foalnet.model.audio_offline import OfflineAudioEncoder, mel_filterbank

SR = 16000


def tone(freq: float, seconds: float = 1.0, amp: float = 0.3) -> torch.Tensor:
    """A harmonic tone (fundamental + 2 weaker overtones) at 16 kHz, shape (S,)."""
    t = torch.arange(int(seconds * SR)) / SR
    return (amp * torch.sin(2 * math.pi * freq * t) + 0.3 * amp * torch.sin(2 * math.pi * 2 * freq * t + 1.0)
            + 0.1 * amp * torch.sin(2 * math.pi * 3 * freq * t))


@pytest.fixture(scope="module")
def encoder() -> OfflineAudioEncoder:
    torch.manual_seed(0)
    return OfflineAudioEncoder(hidden_size=32).eval()


def test_shapes_and_frame_count(encoder: OfflineAudioEncoder) -> None:
    x = torch.randn(3, 8000) * 0.1
    mask = torch.ones(3, 8000, dtype=torch.bool)
    mask[1, 4000:] = False
    mask[2, 161:] = False  # 161 samples: frames start at 0 and 160 -> 2 frames
    hidden, frame_mask = encoder(x, mask)
    assert hidden.shape == (3, 25, 32) and frame_mask.shape == (3, 25)
    assert frame_mask.sum(1).tolist() == [25, 13, 1]  # 20 ms output frames
    assert encoder.hidden_size == 32


@pytest.mark.parametrize("options", [{}, {"normalization": "both", "utterance_std": True},
                                     {"normalization": "utterance", "stride": 3},
                                     {"attention_heads": 4, "utterance_var": True, "time_masks": 2,
                                      "freq_masks": 2, "feature_dropout": 0.2}])
def test_padding_does_not_change_valid_frames(options: dict) -> None:
    torch.manual_seed(1)
    encoder = OfflineAudioEncoder(hidden_size=16, **options).eval()
    x = torch.randn(2, 12000) * 0.1
    mask = torch.ones(2, 12000, dtype=torch.bool)
    mask[1, 7000:] = False
    ref, ref_mask = encoder(x, mask)
    noisy = x.clone()
    noisy[1, 7000:] = torch.randn(5000) * 3.0  # junk where the mask is False
    padded = torch.cat([noisy, torch.full((2, 3000), 7.0)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3000, dtype=torch.bool)], 1)
    out, out_mask = encoder(padded, padded_mask)
    L = ref.shape[1]
    assert torch.equal(out_mask[:, :L], ref_mask) and not out_mask[:, L:].any()
    valid = ref_mask.unsqueeze(-1)
    assert torch.allclose(out[:, :L] * valid, ref * valid, atol=1e-5)


def test_zero_length_items_give_empty_mask_and_no_nan(encoder: OfflineAudioEncoder) -> None:
    hidden, frame_mask = encoder(torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.bool))
    assert hidden.shape[0] == 1 and not frame_mask.any() and torch.isfinite(hidden).all()
    x = torch.randn(2, 4000)
    mask = torch.ones(2, 4000, dtype=torch.bool)
    mask[0] = False
    hidden, frame_mask = encoder(x, mask)
    assert not frame_mask[0].any() and frame_mask[1].all() and torch.isfinite(hidden).all()


def test_gradients_reach_trainable_parts_only() -> None:
    torch.manual_seed(0)
    enc = OfflineAudioEncoder(hidden_size=16, num_layers=1)
    x = tone(150.0, 0.5).repeat(2, 1)
    mask = torch.ones_like(x, dtype=torch.bool)
    hidden, frame_mask = enc(x, mask)
    (hidden * frame_mask.unsqueeze(-1)).pow(2).sum().backward()
    for name, p in enc.named_parameters():
        assert not name.startswith("front_end"), f"front end must hold buffers only, found {name}"
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
    assert all(not b.requires_grad for b in enc.front_end.buffers())
    assert len(list(enc.front_end.buffers())) >= 4


@pytest.mark.parametrize("freq", [90.0, 200.0, 310.0])
def test_pitch_of_a_tone(encoder: OfflineAudioEncoder, freq: float) -> None:
    f0, voicing = encoder.front_end.pitch(tone(freq)[None], 100)
    inner = f0[0, 10:90]  # away from the zero-padded edges
    assert (inner - freq).abs().max() < 2.0
    assert voicing[0, 10:90].min() > 0.9


def test_pitch_of_noise_and_silence_is_unvoiced(encoder: OfflineAudioEncoder) -> None:
    torch.manual_seed(0)
    f0, _ = encoder.front_end.pitch(torch.randn(1, SR) * 0.1, 100)
    assert (f0[0] == 0).float().mean() > 0.9
    f0, voicing = encoder.front_end.pitch(torch.zeros(1, SR), 100)
    assert (f0 == 0).all() and (voicing == 0).all()


def test_energy_feature_of_tone_and_silence() -> None:
    enc = OfflineAudioEncoder(use_mel=False, normalization="global")
    # a 0.5-amplitude sine has mean power 0.125 -> -9.03 dB -> scaled (dB + 50) / 20 = 2.048
    wave = torch.cat([torch.zeros(SR // 2), 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(SR // 2) / SR)])
    feats, mask = enc.frontend(wave[None], torch.ones(1, SR, dtype=torch.bool))
    energy = feats[0, :, 2]
    assert energy[5:40].max() == pytest.approx((-100.0 + 50.0) / 20.0, abs=1e-3)  # silence floor
    assert energy[60:90].mean().item() == pytest.approx((10 * math.log10(0.125) + 50) / 20, abs=0.02)
    semitones = feats[0, 60:90, 0] * 12.0  # 440 Hz is 12*log2(4.4) = 25.65 semitones above 100 Hz
    assert semitones.mean().item() == pytest.approx(12 * math.log2(4.4), abs=0.1)


def test_mel_filterbank_partition() -> None:
    fb = mel_filterbank(n_mels=10, n_fft=512, sample_rate=SR, fmin=0.0, fmax=8000.0)
    assert fb.shape == (257, 10) and (fb >= 0).all()
    inner = fb.sum(1)[10:190]  # between the first and last centre the triangles sum to 1
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-4)


def test_options_are_json_and_validated() -> None:
    enc = OfflineAudioEncoder(hidden_size=8, normalization="utterance")
    rebuilt = OfflineAudioEncoder(**json.loads(json.dumps(enc.to_dict())))
    assert rebuilt.to_dict() == enc.to_dict()
    with pytest.raises(ValueError, match="normalization"):
        OfflineAudioEncoder(normalization="per-speaker")
    with pytest.raises(TypeError):
        OfflineAudioEncoder(hiden_size=8)


def test_augmentation_is_off_in_eval_and_keeps_default_init() -> None:
    torch.manual_seed(0)
    plain = OfflineAudioEncoder(hidden_size=16).eval()
    torch.manual_seed(0)
    aug = OfflineAudioEncoder(hidden_size=16, time_masks=3, freq_masks=3, feature_dropout=0.3).eval()
    x = tone(180.0, 0.6).repeat(2, 1)
    mask = torch.ones_like(x, dtype=torch.bool)
    assert torch.equal(plain(x, mask)[0], aug(x, mask)[0])


def test_spec_augment_fills_spans_with_the_clip_mean() -> None:
    enc = OfflineAudioEncoder(hidden_size=8, n_mels=10, time_masks=1, time_mask_width=5, freq_masks=1,
                              freq_mask_width=3).train()
    torch.manual_seed(3)
    feats = torch.randn(4, 30, enc.front_end.num_features)  # 10 mel + 8 prosodic channels
    mask = torch.ones(4, 30, dtype=torch.bool)
    out = enc.augment(feats, mask)
    changed = out != feats
    mean = feats.mean(1, keepdim=True).expand_as(feats)
    torch.testing.assert_close(out[changed], mean[changed], rtol=1e-6, atol=1e-6)  # a float mean: rounding
    assert changed.any()
    rows = changed.all(-1)  # hidden time frames: every channel
    assert (rows.sum(1) <= 5).all()
    cols = (changed & ~rows.unsqueeze(-1)).any(1)  # hidden bands outside the hidden frames
    assert not cols[:, 10:].any() and (cols.sum(1) <= 3).all()


def test_feature_dropout_drops_whole_channels_in_training() -> None:
    enc = OfflineAudioEncoder(hidden_size=8, feature_dropout=0.5).train()
    torch.manual_seed(0)
    feats = torch.rand(3, 20, enc.front_end.num_features) + 1.0
    out = enc.augment(feats, torch.ones(3, 20, dtype=torch.bool))
    zero = (out == 0).all(1)  # (B, F) channels dropped for the whole clip
    assert zero.any() and torch.allclose(out[~zero.unsqueeze(1).expand_as(out)].view(-1),
                                         2.0 * feats[~zero.unsqueeze(1).expand_as(out)].view(-1))


def test_variance_channels_are_squared_deviations() -> None:
    enc = OfflineAudioEncoder(hidden_size=8, utterance_var=True)
    x = tone(150.0, 0.5)[None]
    feats, mask = enc.frontend(x, torch.ones_like(x, dtype=torch.bool))
    nf = enc.front_end.num_features
    base, var = feats[..., :nf], feats[..., nf:]
    assert feats.shape[-1] == 2 * nf
    assert torch.allclose(var, (base - base.mean(1, keepdim=True)).pow(2), atol=1e-5)


def test_attention_gives_frames_utterance_context() -> None:
    torch.manual_seed(0)
    enc = OfflineAudioEncoder(hidden_size=16, num_layers=0, stride=1, attention_heads=2).eval()
    x = torch.randn(1, 16000) * 0.1
    mask = torch.ones_like(x, dtype=torch.bool)
    ref, _ = enc(x, mask)
    x2 = x.clone()
    x2[0, 12000:] = 0.0  # change the end only: without attention, the start frames would not move
    out, _ = enc(x2, mask)
    assert not torch.allclose(out[0, :10], ref[0, :10], atol=1e-4)
    with pytest.raises(ValueError, match="attention_heads"):
        OfflineAudioEncoder(hidden_size=10, attention_heads=4)
