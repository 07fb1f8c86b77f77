"""The packed WavLM encoder and the FFT convolution compute what transformers computes.

``foalnet.model.wavlm_packed`` re-runs WavLM's encoder layers on valid frames only, with the
positional convolution by FFT (``foalnet.model.fft_conv``). These tests pin, on the same
weights: F.conv1d == conv1d_fft (outputs and all gradients); transformers' encoder == the packed
one on valid frames, for both layer-norm variants, with the FFT and the direct convolution, in
eval and in training (dropout off), outputs and parameter gradients; padding invariance;
activation checkpointing; and which models take the path.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from foalnet.model.audio import HFAudioEncoder
from foalnet.model.fft_conv import conv1d_fft, dft_basis, fft_size
from foalnet.model.foalnet import FoalNet, FoalNetConfig
from foalnet.model.packing import Packing
from foalnet.model.wavlm_packed import packed_encoder_forward, supports_packed


# ------------------------------------------------------------------------------ FFT convolution
def test_fft_size_is_the_next_5_smooth_number():
    assert [fft_size(n) for n in (1, 7, 11, 13, 428, 1000, 1001)] == [1, 8, 12, 15, 432, 1000, 1024]


@pytest.mark.parametrize("B,C,O,T,K,groups,padding", [
    (2, 32, 32, 50, 16, 4, 8),  # WavLM-like: even kernel, same padding, grouped
    (3, 64, 64, 300, 128, 16, 64),  # WavLM-Large's kernel and groups, 6 s of frames
    (1, 8, 12, 5, 7, 2, 3),  # shorter than the kernel, odd kernel, O != C
    (2, 6, 4, 20, 3, 1, 0),  # ungrouped, no padding
])
def test_conv1d_fft_equals_conv1d_with_gradients(B, C, O, T, K, groups, padding):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, T, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(O, C // groups, K, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(O, generator=gen, dtype=torch.float64, requires_grad=True)
    direct = F.conv1d(x, w, b, padding=padding, groups=groups)
    by_fft = conv1d_fft(x, w, b, padding=padding, groups=groups)
    assert by_fft.shape == direct.shape
    torch.testing.assert_close(by_fft, direct, rtol=1e-9, atol=1e-9)
    weights = torch.randn(direct.shape, generator=gen, dtype=torch.float64)  # a non-uniform upstream gradient
    grads_direct = torch.autograd.grad((direct * weights).sum(), (x, w, b))
    grads_fft = torch.autograd.grad((by_fft * weights).sum(), (x, w, b))
    for g_fft, g_direct in zip(grads_fft, grads_direct):
        torch.testing.assert_close(g_fft, g_direct, rtol=1e-9, atol=1e-9)


def test_conv1d_fft_float32_error_is_rounding_only():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 300, generator=gen)
    w = torch.randn(64, 4, 128, generator=gen) / 20
    direct = F.conv1d(x, w, padding=64, groups=16)
    assert (conv1d_fft(x, w, padding=64, groups=16) - direct).abs().max() < 1e-5 * direct.abs().max()


def test_conv1d_fft_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="groups=3"):
        conv1d_fft(torch.zeros(1, 8, 10), torch.zeros(8, 2, 3), groups=3)


# ------------------------------------------------------------------------------ packed encoder
def _wavlm(stable: bool, kernel: int, dropout: float = 0.0):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        conv_dim=[32, 32], conv_stride=[5, 4], conv_kernel=[10, 8], feat_extract_norm="layer",
        do_stable_layer_norm=stable, num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=16,
        num_buckets=32, max_bucket_distance=64, layerdrop=0.0, mask_time_prob=0.0,
        hidden_dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, feat_proj_dropout=dropout,
    )
    return WavLMModel(config)


def _hidden_and_mask(lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    hidden = torch.randn(len(lengths), T, 64, generator=gen)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return hidden, mask


@pytest.mark.parametrize("n", [12, 15])  # with and without a Nyquist bin
def test_dft_basis_matches_rfft_and_the_start_of_irfft(n):
    gen = torch.Generator().manual_seed(0)
    taps = 5
    kernels = torch.randn(3, taps, generator=gen, dtype=torch.float64)
    forward = dft_basis(n, taps, -1.0, torch.complex128, torch.device("cpu"))
    torch.testing.assert_close(kernels.to(torch.complex128) @ forward.T, torch.fft.rfft(kernels, n=n))
    spectrum = torch.randn(n // 2 + 1, 4, generator=gen, dtype=torch.complex128)  # any half spectrum
    inverse = dft_basis(n, taps, +1.0, torch.complex128, torch.device("cpu"), inverse=True)
    torch.testing.assert_close((spectrum.T @ inverse).real, torch.fft.irfft(spectrum.T, n=n)[:, :taps])


VARIANTS = {"large-fft": (True, 128), "large-direct": (True, 16), "base-fft": (False, 128), "base-direct": (False, 16)}
LENGTHS = [40, 7, 33, 1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_encoder_equals_transformers_on_valid_frames_eval(variant):
    model = _wavlm(*VARIANTS[variant]).eval()
    hidden, mask = _hidden_and_mask(LENGTHS)
    with torch.no_grad():
        reference = model.encoder(hidden.clone(), attention_mask=mask)[0]
        packed = packed_encoder_forward(model.encoder, hidden, mask)
    torch.testing.assert_close(packed[mask], reference[mask], rtol=1e-5, atol=1e-5)
    assert packed[~mask].abs().max() == 0  # padding is zero (transformers leaves values there)


@pytest.mark.parametrize("variant", ["large-fft", "base-direct"])
def test_packed_encoder_training_gradients_equal_transformers(variant):
    """Training mode (dropout probabilities 0): same outputs and same gradient for every parameter
    and for the input, under a loss that reads valid frames only (as FoalNet's pooling does)."""
    model = _wavlm(*VARIANTS[variant]).train()
    hidden, mask = _hidden_and_mask(LENGTHS, seed=1)
    target = torch.randn(hidden.shape)

    def grads(run):
        model.zero_grad()
        x = hidden.clone().requires_grad_()
        out = run(x)
        ((out * target)[mask] ** 2).sum().backward()
        return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None}

    ref_out, ref_dx, ref_grads = grads(lambda x: model.encoder(x * 1.0, attention_mask=mask)[0])
    out, dx, packed_grads = grads(lambda x: packed_encoder_forward(model.encoder, x, mask))
    torch.testing.assert_close(out[mask], ref_out[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-4, atol=1e-5)
    assert set(packed_grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        # float32 rounding grows with a gradient's scale: the positional convolution's weight
        # gradient (entries up to ~60 here) is a sum over every frame and frequency
        atol = max(1e-5, 1e-6 * grad.abs().max().item())
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=atol, msg=name)


def test_packed_encoder_runs_under_bf16_autocast_like_transformers():
    model = _wavlm(True, 128).eval()
    hidden, mask = _hidden_and_mask(LENGTHS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model.encoder(hidden.clone(), attention_mask=mask)[0].float()
        packed = packed_encoder_forward(model.encoder, hidden, mask).float()
    assert torch.isfinite(packed).all()
    torch.testing.assert_close(packed[mask], reference[mask], rtol=0.05, atol=0.05)  # bf16: ~3 digits


def test_packed_encoder_trains_under_bf16_autocast_like_transformers():
    """Autocast does not reach backward: the lean ops cast for themselves, so the recomputed
    attention maps and GELU match the forward pass and every gradient has its parameter's dtype."""
    model = _wavlm(True, 128).train()  # dropout off: the same function on both paths
    hidden, mask = _hidden_and_mask(LENGTHS)

    def grads(packed: bool) -> torch.Tensor:
        model.zero_grad()
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if packed:
                out = packed_encoder_forward(model.encoder, hidden, mask)
            else:
                out = model.encoder(hidden.clone(), attention_mask=mask)[0]
            loss = out.float()[mask].pow(2).mean()
        loss.backward()
        assert all(p.grad.dtype == p.dtype for p in model.parameters() if p.grad is not None)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    reference, packed = grads(False), grads(True)
    assert torch.isfinite(packed).all()
    cosine = torch.nn.functional.cosine_similarity(packed, reference, dim=0).item()
    assert cosine > 0.9999  # bf16 rounding apart, the same gradients
    assert packed.norm() == pytest.approx(reference.norm().item(), rel=1e-3)


def test_packed_encoder_output_does_not_depend_on_padding():
    model = _wavlm(True, 128).eval()
    hidden, mask = _hidden_and_mask(LENGTHS, seed=2)
    with torch.no_grad():
        batch = packed_encoder_forward(model.encoder, hidden, mask)
        for row, length in enumerate(LENGTHS):
            alone = packed_encoder_forward(model.encoder, hidden[row : row + 1, :length], mask[row : row + 1, :length])
            torch.testing.assert_close(batch[row, :length], alone[0], rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    encoder = HFAudioEncoder(_wavlm(True, 128, dropout=0.1))
    encoder.freeze_feature_encoder()
    encoder.train()
    features = torch.randn(3, 30, 32)
    mask = torch.arange(30)[None, :] < torch.tensor([30, 12, 5])[:, None]

    def grads():
        encoder.zero_grad()
        torch.manual_seed(7)  # same dropout draws; checkpointing replays them in the recompute
        hidden, frame_mask = encoder.encode_frontend(features, mask)
        hidden[frame_mask].pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain = grads()
    encoder.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in encoder.model.encoder.layers)
    checkpointed = grads()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_packing_round_trip():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    x = torch.arange(6.0).view(2, 3, 1)
    packing = Packing(mask)
    assert packing.pack(x).flatten().tolist() == [0.0, 1.0, 3.0]
    assert packing.unpack(packing.pack(x)).flatten().tolist() == [0.0, 1.0, 0.0, 3.0, 0.0, 0.0]
    full = Packing(torch.ones(2, 3, dtype=torch.bool))
    assert full.index is None and torch.equal(full.unpack(full.pack(x)), x)


def test_packing_mean_and_repeat():
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    x = torch.tensor([[1.0, 3.0, 99.0], [99.0, 99.0, 99.0], [5.0, 99.0, 99.0]]).unsqueeze(-1)
    packing = Packing(mask)
    assert packing.mean(packing.pack(x)).flatten().tolist() == [2.0, 0.0, 5.0]  # empty row: 0
    twice = packing.repeat(2)
    assert torch.equal(twice.mask, mask.repeat(2, 1))
    assert torch.equal(twice.pack(x.repeat(2, 1, 1)), packing.pack(x).repeat(2, 1))
    full = Packing(torch.ones(2, 2, dtype=torch.bool))
    assert full.mean(torch.tensor([[1.0], [2.0], [3.0], [5.0]])).flatten().tolist() == [1.5, 4.0]


# ------------------------------------------------------------------------------ which models use it
def test_only_wavlm_takes_the_packed_path():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    wav2vec2 = HFAudioEncoder(Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=[16], conv_stride=[5], conv_kernel=[10], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)))
    assert not supports_packed(wav2vec2.model)
    wav2vec2.use_packed_encoder(True)
    assert not wav2vec2.packed
    wavlm = HFAudioEncoder(_wavlm(True, 16))
    assert supports_packed(wavlm.model) and wavlm.packed


def test_config_switch_selects_the_path_and_both_give_the_same_logits():
    torch.manual_seed(0)
    base = dataclasses.replace(FoalNetConfig.tiny(), audio_encoder="tiny-wavlm", audio_options={})
    packed = FoalNet(base).eval()
    plain = FoalNet(dataclasses.replace(base, audio_packed_encoder=False)).eval()
    plain.load_state_dict(packed.state_dict())
    assert packed.audio_encoder.packed and not plain.audio_encoder.packed
    gen = torch.Generator().manual_seed(3)
    wave = 0.1 * torch.randn(3, 16000, generator=gen)
    wave_mask = torch.arange(16000)[None, :] < torch.tensor([16000, 9000, 4000])[:, None]
    video = torch.randn(3, 6, packed.video_dim, generator=gen)
    video_mask = torch.ones(3, 6, dtype=torch.bool)
    with torch.no_grad():
        a = packed(waveform=wave * wave_mask, waveform_mask=wave_mask, video=video, video_mask=video_mask).logits
        b = plain(waveform=wave * wave_mask, waveform_mask=wave_mask, video=video, video_mask=video_mask).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packing_repeat_index_equals_the_repeated_masks():
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    repeated = Packing(mask).repeat(3)
    assert repeated.index.tolist() == Packing(mask.repeat(3, 1)).index.tolist()
    assert repeated.index.tolist()[:3] == [0, 1, 3] and repeated.index.tolist()[3:6] == [9, 10, 12]
