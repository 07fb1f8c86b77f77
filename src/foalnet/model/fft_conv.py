"""Grouped 1-D convolution by FFT: WavLM's positional convolution (kernel 128, 16 groups).

``F.conv1d`` computes that convolution directly, 8.4 M multiply-adds per frame for WavLM-Large;
on a CPU it was about a fifth of a training step (benchmarks/train_step.py). In the frequency
domain the same operation is one small matrix product per (group, frequency), and the backward
pass (input and weight gradients) is two more, so forward + backward costs a fraction of the
direct form (about 4.5x less CPU time at batch 16 x 300 frames). The kernels' spectra (1.7x
the weight's size) are made and turned back into a weight gradient by products with a DFT
matrix, already in the layout the batched products need. The result equals ``F.conv1d`` up to
float rounding (about 1e-6 relative in float32; tests/test_packed_wavlm.py).

``conv1d_fft(x, weight, bias, padding, groups)`` is a drop-in for ``F.conv1d`` with stride 1,
dilation 1 and symmetric zero padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fft_size(n: int) -> int:
    """Smallest m >= n with no prime factor above 5 (pocketFFT/cuFFT are fast on those sizes)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def dft_basis(n: int, taps: int, sign: float, dtype: torch.dtype, device: torch.device,
              inverse: bool = False) -> torch.Tensor:
    """[n // 2 + 1, taps] matrix of exp(sign * 2 pi i f k / n) (frequency f, tap k), made in
    float64. ``inverse``: with irfft's weights (1 at f = 0 and at n / 2, 2 elsewhere, over n), so
    that ``(Z.T @ basis).real`` equals ``irfft(Z, n)[..., :taps]`` for a half spectrum Z [Fr, ...]."""
    freqs = torch.arange(n // 2 + 1, dtype=torch.int64)[:, None]
    angle = ((freqs * torch.arange(taps, dtype=torch.int64)) % n).to(torch.float64) * (2 * math.pi / n)
    basis = torch.polar(torch.ones_like(angle), sign * angle)
    if inverse:
        weights = torch.full_like(freqs, 2, dtype=torch.float64)
        weights[0] = 1.0
        if n % 2 == 0:
            weights[-1] = 1.0
        basis = basis * (weights / n)
    return basis.to(device=device, dtype=dtype)


def _kernel_spectrum(weight: torch.Tensor, n: int, sign: float) -> torch.Tensor:
    """Length-n spectra of all kernels as one matrix product, laid out [Fr, O * C_g] (the
    frequency outermost, ready to be batched over), not by padding the kernels and FFT-ing them.
    For WavLM-Large's 8.4 M weights the padded copy, the transform and the transposes it needs
    were 1.7 s of a 9 s training step (profiler; 114 MB temporaries each); with the product the
    step took 4 % less time and 11 % less peak memory. Measured alone, forward + backward, the
    two ways cost about the same (0.46 s FFT, 0.50 s product). sign -1: the spectrum, +1: its
    conjugate."""
    out_channels, in_per_group, taps = weight.shape
    complex_dtype = torch.complex64 if weight.dtype == torch.float32 else torch.complex128
    basis = dft_basis(n, taps, sign, complex_dtype, weight.device)
    return basis @ weight.reshape(out_channels * in_per_group, taps).to(complex_dtype).T


class _FFTConv1d(torch.autograd.Function):
    """Cross-correlation of a zero-padded input with each group's kernels, in frequency space.

    With X = rfft(padded x), W = the kernels' length-n spectrum, the correlation is
    irfft(conj(W) X); the input gradient is irfft(W G) and the weight gradient irfft(conj(G) X)
    summed over the batch, cut to the kernel length (G = rfft(grad_out)). n >= T + 2 * padding,
    so nothing wraps around. Spectra are laid out [Fr, groups, rows, cols], so each product is
    one batched matmul; the kernels' side (the large one) goes to and from that layout by
    products with a DFT matrix (``dft_basis``) instead of FFTs and transposes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, groups: int) -> torch.Tensor:
        B, C, T = x.shape
        O, C_g, K = weight.shape
        G, O_g = groups, O // groups
        L = T + 2 * padding - K + 1  # output length of F.conv1d
        n = fft_size(T + 2 * padding)
        Fr = n // 2 + 1
        x_f = torch.fft.rfft(F.pad(x, (padding, 0)), n=n)  # [B, C, Fr]
        x_f = x_f.view(B, G, C_g, Fr).permute(3, 1, 2, 0).contiguous()  # [Fr, G, C_g, B]
        w_conj = _kernel_spectrum(weight, n, +1.0).view(Fr, G, O_g, C_g)
        y_f = torch.matmul(w_conj, x_f)  # [Fr, G, O_g, B]
        del w_conj
        y = torch.fft.irfft(y_f.permute(3, 1, 2, 0).reshape(B, O, Fr), n=n)[..., :L]
        ctx.save_for_backward(x_f, weight)  # the kernels' spectrum (as large as 1.7x the weight) is recomputed
        ctx.sizes = (B, C, T, O, C_g, K, G, O_g, n, padding)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x_f, weight = ctx.saved_tensors
        B, C, T, O, C_g, K, G, O_g, n, padding = ctx.sizes
        Fr = x_f.shape[0]
        g_f = torch.fft.rfft(grad_out, n=n)  # zero beyond the output length
        g_f = g_f.view(B, G, O_g, Fr).permute(3, 1, 2, 0)  # [Fr, G, O_g, B]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w_f = _kernel_spectrum(weight, n, -1.0).view(Fr, G, O_g, C_g)
            gx_f = torch.matmul(w_f.transpose(-1, -2), g_f)  # [Fr, G, C_g, B]
            del w_f
            gx = torch.fft.irfft(gx_f.permute(3, 1, 2, 0).reshape(B, C, Fr), n=n)
            grad_x = gx[..., padding : padding + T]
        if ctx.needs_input_grad[1]:
            gw_f = torch.matmul(g_f.conj(), x_f.transpose(-1, -2)).view(Fr, O * C_g)  # [Fr, G, O_g, C_g]
            inverse = dft_basis(n, K, +1.0, gw_f.dtype, gw_f.device, inverse=True)
            grad_w = (gw_f.T @ inverse).real.reshape(O, C_g, K).contiguous()
        return grad_x, grad_w, None, None


def conv1d_fft(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               padding: int = 0, groups: int = 1) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding, groups=groups)`` computed by FFT.

    x [B, C, T], weight [O, C/groups, K] -> [B, O, T + 2*padding - K + 1]. Float32/64 only
    (half-precision FFTs are limited to power-of-two sizes); other dtypes are computed in float32.
    """
    if x.dim() != 3 or weight.dim() != 3 or x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"conv1d_fft: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit groups={groups}")
    dtype = x.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    y = _FFTConv1d.apply(x.to(compute), weight.to(compute), int(padding), int(groups))
    if bias is not None:
        y = y + bias.to(compute)[:, None]
    return y.to(dtype)
