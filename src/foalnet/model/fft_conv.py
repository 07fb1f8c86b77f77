"""WavLM's positional convolution by FFT, on CPU only: the one device-guarded kernel of the model.

WavLM-Large's positional embedding is a grouped ``Conv1d`` (1024 channels, 16 groups, 128 taps,
weight norm) over the whole sequence. On CPU its oneDNN backward is the largest single op of a
training step: profiled at one thread on a 2-layer WavLM-Large-width encoder, batch 16,
IEMOCAP-like lengths (``benchmarks/train_step.py`` batches, foalnet with the audio cache), the
convolution's forward took 1.5 s and its backward 7.3 s of a 33.8 s step. By the convolution
theorem the same product costs O(T log T) per channel instead of O(T K): torch's own ``rfft``
of the input, the kernel's spectrum as two real products with a DFT matrix, a complex batched
``matmul`` per frequency (the 64 x 64 channel mixing of each group) and ``irfft``. Autograd differentiates these ops itself: there is no custom backward here, no
private torch API, and the weight-norm parametrisation is the module's own (``conv.weight``).

Where it runs: tensors on CPU, convolutions of at least ``MIN_TAPS`` taps (below that the direct
kernel is already cheap). Everywhere else (CUDA: cuDNN) the module's own forward runs. It computes
in float32 with autocast off (CPU float16 / bfloat16 convolutions fall back to slow reference
kernels; the result is at least as accurate as the direct kernel's). Measured gain per cached
training step of a 2-layer WavLM-Large-width encoder (docs/benchmarks.md): 1.34x on a Sapphire
Rapids VM, 1.19x on an AMD EPYC VM after the rest of the step got faster, both at 2 threads. tests/test_fft_conv.py checks it against
``F.conv1d`` and the module, values and gradients (gradcheck in float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_TAPS = 32  # shorter kernels keep the direct convolution (its cost is K per output frame)


def fast_fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (FFT libraries are fastest on such sizes)."""
    m = max(1, n)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def fft_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
               groups: int) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding, groups=groups)`` (stride 1, no dilation) by FFT.

    x [B, C, T], weight [O, C // groups, K] -> [B, O, T + 2 padding - K + 1]."""
    B, C, T = x.shape
    O, Cg, K = weight.shape
    if C != Cg * groups or O % groups:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit {C} channels in {groups} groups")
    if padding > K - 1:  # outputs beyond the full convolution: zero-pad the input explicitly
        x = F.pad(x, (padding - K + 1, padding - K + 1))
        T, padding = x.shape[-1], K - 1
    out_len = T + 2 * padding - K + 1
    n = fast_fft_length(T + K - 1)  # the full linear convolution fits: no circular wrap-around
    G = groups
    spectrum_x = torch.fft.rfft(x, n=n)  # (B, C, F)
    Fq = spectrum_x.shape[-1]
    xs = spectrum_x.view(B, G, Cg, Fq).permute(1, 3, 2, 0)  # (G, F, Cg, B)
    ws = kernel_spectrum(weight, G, n, Fq)  # (G, F, Og, Cg)
    ys = torch.matmul(ws, xs)  # (G, F, Og, B): each group's channel mixing, per frequency
    spectrum_y = ys.permute(3, 0, 2, 1).reshape(B, O, Fq)
    # conv1d is a correlation, i.e. a convolution with the flipped kernel: output t is index
    # t + K - 1 - padding of the full convolution
    start = K - 1 - padding
    y = torch.fft.irfft(spectrum_y, n=n)[..., start:start + out_len]
    return y if bias is None else y + bias[:, None]


def kernel_spectrum(weight: torch.Tensor, groups: int, n: int, bins: int) -> torch.Tensor:
    """``rfft(weight.flip(-1), n)[..., :bins]`` laid out (groups, bins, O // groups, Cg) for the
    per-frequency matmul, as two real matrix products with the bins x K DFT matrix: measured
    about 2x cheaper, forward + backward, than the FFT of the zero-padded kernel and its permuted
    copy (WavLM-Large's 1024 x 64 x 128 kernel, one CPU thread)."""
    O, Cg, K = weight.shape
    freq = torch.arange(bins, dtype=torch.float64, device=weight.device)[:, None]
    tap = torch.arange(K, dtype=torch.float64, device=weight.device)[None, :]
    angle = (-2.0 * torch.pi / n) * freq * (K - 1 - tap)  # tap k of the flipped kernel sits at K-1-k
    cos, sin = torch.cos(angle).to(weight.dtype), torch.sin(angle).to(weight.dtype)  # (bins, K)
    taps_first = weight.view(groups, O // groups * Cg, K).transpose(1, 2)  # (G, K, Og*Cg), a view
    # real and imaginary parts stacked as a complex tensor's layout: torch.complex would keep both
    # parts for its backward (0.1 GiB for WavLM-Large's kernel), the view keeps nothing
    parts = torch.stack([cos @ taps_first, sin @ taps_first], dim=-1)  # (G, bins, Og*Cg, 2)
    return torch.view_as_complex(parts).view(groups, bins, O // groups, Cg)


def uses_fft(conv: nn.Conv1d, x: torch.Tensor) -> bool:
    """The FFT path applies: CPU tensors, a long kernel, stride 1, no dilation, zero padding."""
    return (x.device.type == "cpu" and conv.kernel_size[0] >= MIN_TAPS and conv.stride == (1,)
            and conv.dilation == (1,) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def positional_conv(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``module(hidden)`` for transformers' ``WavLMPositionalConvEmbedding`` (conv, same-padding
    trim, activation; hidden [B, T, H]), the convolution by FFT where :func:`uses_fft` says so."""
    conv = module.conv
    x = hidden.transpose(1, 2)
    if not uses_fft(conv, x):
        return module(hidden)
    with torch.autocast("cpu", enabled=False):
        y = fft_conv1d(x.float(), conv.weight.float(), None if conv.bias is None else conv.bias.float(),
                       conv.padding[0], conv.groups)
    return module.activation(module.padding(y)).transpose(1, 2)
