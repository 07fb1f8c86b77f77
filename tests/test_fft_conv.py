"""The CPU positional convolution by FFT computes what ``F.conv1d`` / transformers' module compute."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foalnet.model.fft_conv import MIN_TAPS, fast_fft_length, fft_conv1d, kernel_spectrum, positional_conv, uses_fft


def test_fast_fft_length_is_the_next_5_smooth_number():
    assert [fast_fft_length(n) for n in (1, 7, 11, 13, 17, 427)] == [1, 8, 12, 15, 18, 432]


def test_kernel_spectrum_is_the_fft_of_the_flipped_kernel_per_group():
    weight = torch.randn(6, 2, 5, dtype=torch.float64)  # 3 groups of 2 outputs x 2 inputs
    n = 12
    expected = torch.fft.rfft(weight.flip(-1), n=n)  # (O, Cg, F)
    got = kernel_spectrum(weight, 3, n, n // 2 + 1)  # (G, F, Og, Cg)
    torch.testing.assert_close(got, expected.view(3, 2, 2, 7).permute(0, 3, 1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("taps, padding", [(6, 3), (5, 2), (7, 0), (4, 5)])
def test_equals_conv1d_and_its_gradients_in_float64(taps, padding):
    gen = torch.Generator().manual_seed(taps)
    x = torch.randn(2, 8, 23, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(8, 2, taps, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, generator=gen, requires_grad=True)
    got = fft_conv1d(x, w, b, padding, groups=4)
    torch.testing.assert_close(got, F.conv1d(x, w, b, padding=padding, groups=4), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: fft_conv1d(*a, padding, 4), (x, w, b))


def test_a_weight_that_does_not_fit_the_groups_is_refused():
    with pytest.raises(ValueError, match="does not fit 8 channels in 3 groups"):
        fft_conv1d(torch.zeros(1, 8, 10), torch.zeros(9, 2, 4), None, 2, groups=3)


def wavlm_pos_conv(taps: int, groups: int = 4, width: int = 16):
    from transformers import WavLMConfig
    from transformers.models.wavlm.modeling_wavlm import WavLMPositionalConvEmbedding

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=width, num_conv_pos_embeddings=taps, num_conv_pos_embedding_groups=groups)
    return WavLMPositionalConvEmbedding(config)


def test_positional_conv_equals_the_module_values_and_gradients():
    """WavLM-Large's even kernel (same-pad trim), weight norm, GELU: through the module's own parts."""
    module = wavlm_pos_conv(taps=MIN_TAPS * 2).double()
    hidden = torch.randn(3, 41, 16, dtype=torch.float64, requires_grad=True)
    assert uses_fft(module.conv, hidden.transpose(1, 2))
    ours = positional_conv(module, hidden)
    grads = torch.autograd.grad(ours.square().sum(), [hidden, *module.parameters()])
    reference = module(hidden)
    expected = torch.autograd.grad(reference.square().sum(), [hidden, *module.parameters()])
    # fft_conv1d computes in float32 (the production dtype), so compare at float32 precision
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-5)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


def test_short_kernels_and_other_devices_keep_the_module():
    short = wavlm_pos_conv(taps=MIN_TAPS - 2)
    hidden = torch.randn(2, 9, 16)
    assert not uses_fft(short.conv, hidden.transpose(1, 2))
    assert torch.equal(positional_conv(short, hidden), short(hidden))
    long = wavlm_pos_conv(taps=MIN_TAPS)
    assert not uses_fft(long.conv, hidden.transpose(1, 2).to("meta"))  # e.g. CUDA: cuDNN's kernel


def test_under_autocast_it_computes_in_float32():
    module = wavlm_pos_conv(taps=MIN_TAPS)
    hidden = torch.randn(2, 30, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = positional_conv(module, hidden)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, module(hidden), rtol=1e-4, atol=1e-5)
