"""Grouped 1-D convolution by FFT: WavLM's positional convolution (kernel 128, 16 groups).

``F.conv1d`` computes that convolution directly, 8.4 M multiply-adds per frame for WavLM-Large;
on a CPU it was about a fifth of a training step (benchmarks/train_step.py). In the frequency
domain the same operation is one small matrix product per (group, frequency), and the backward
pass (input and weight gradients) is two more, so forward + backward costs a fraction of the
direct form (about 4.5x less CPU time at batch 16 x 300 frames). The result equals
``F.conv1d`` up to float rounding (about 1e-6 relative in float32; tests/test_packed_wavlm.py).

``conv1d_fft(x, weight, bias, padding, groups)`` is a drop-in for ``F.conv1d`` with stride 1,
dilation 1 and symmetric zero padding.
"""
from __future__ import annotations

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


class _FFTConv1d(torch.autograd.Function):
    """Cross-correlation of a zero-padded input with each group's kernels, in frequency space.

    With X = rfft(padded x), W = rfft(w) (both length n), the correlation is
    irfft(conj(W) X); the input gradient is irfft(W G) and the weight gradient irfft(conj(G) X)
    summed over the batch (G = rfft(grad_out)). n >= T + 2 * padding, so nothing wraps around.
    Spectra are laid out [groups, freq, rows, cols] so each product is one batched matmul.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, groups: int) -> torch.Tensor:
        B, C, T = x.shape
        O, C_g, K = weight.shape
        G, O_g = groups, O // groups
        L = T + 2 * padding - K + 1  # output length of F.conv1d
        n = fft_size(T + 2 * padding)
        x_f = torch.fft.rfft(F.pad(x, (padding, 0)), n=n)  # [B, C, Fr]
        w_f = torch.fft.rfft(weight, n=n)  # [O, C_g, Fr]
        Fr = x_f.shape[-1]
        x_f = x_f.view(B, G, C_g, Fr).permute(1, 3, 2, 0)  # [G, Fr, C_g, B]
        w_f = w_f.view(G, O_g, C_g, Fr).permute(0, 3, 1, 2)  # [G, Fr, O_g, C_g]
        y_f = torch.matmul(w_f.conj(), x_f)  # [G, Fr, O_g, B]
        y = torch.fft.irfft(y_f.permute(3, 0, 2, 1).reshape(B, O, Fr), n=n)[..., :L]
        ctx.save_for_backward(x_f, weight)  # the weight's spectrum (groups x n/2 x O/g x C/g) is recomputed
        ctx.sizes = (B, C, T, O, C_g, K, G, O_g, n, padding)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x_f, weight = ctx.saved_tensors
        B, C, T, O, C_g, K, G, O_g, n, padding = ctx.sizes
        Fr = x_f.shape[1]
        w_f = torch.fft.rfft(weight, n=n).view(G, O_g, C_g, Fr).permute(0, 3, 1, 2)  # [G, Fr, O_g, C_g]
        g_f = torch.fft.rfft(grad_out, n=n)  # zero beyond the output length
        g_f = g_f.view(B, G, O_g, Fr).permute(1, 3, 2, 0)  # [G, Fr, O_g, B]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gx_f = torch.matmul(w_f.transpose(-1, -2), g_f)  # [G, Fr, C_g, B]
            gx = torch.fft.irfft(gx_f.permute(3, 0, 2, 1).reshape(B, C, Fr), n=n)
            grad_x = gx[..., padding : padding + T]
        if ctx.needs_input_grad[1]:
            gw_f = torch.matmul(g_f.conj(), x_f.transpose(-1, -2))  # [G, Fr, O_g, C_g]
            gw = torch.fft.irfft(gw_f.permute(0, 2, 3, 1).reshape(O, C_g, Fr), n=n)
            grad_w = gw[..., :K]
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
