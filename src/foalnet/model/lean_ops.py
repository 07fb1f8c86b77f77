"""Dropout and attention that keep less for the backward pass (same functions as torch's).

``F.dropout`` saves a float32 mask (4 bytes per element) and the math attention path of
``scaled_dot_product_attention`` (the one taken on CPU when the attention bias needs a gradient,
as WavLM's gated relative position bias does) keeps the softmax output, a float dropout mask and
the dropped-out probabilities: three [B, heads, T, T] tensors per layer. Here dropout keeps a
bool mask (1 byte) and attention keeps the probabilities and that bool mask; what else the
backward needs is recomputed from them (one elementwise pass). Same distribution of dropout
masks, same outputs and gradients (tests/test_lean_ops.py against torch's own ops).
"""
from __future__ import annotations

import torch


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask, bool."""
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = _keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(mask, x, 0.0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` that saves a bool mask for backward."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return _Dropout.apply(x, float(p))


class _Attention(torch.autograd.Function):
    """softmax(scale * q k^T + bias) -> dropout -> @ v on [B*heads, T, d] tensors.

    The dropout's 1/(1-p) is applied to the [T, d] side (out, grad_out), not to the [T, T] map."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                scale: float, p: float) -> torch.Tensor:
        probs = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale).softmax(dim=-1)
        mask = _keep_mask(probs.shape, p, probs.device) if p > 0.0 else None
        ctx.keep_scale = 1.0 / (1.0 - p) if p > 0.0 else 1.0
        if mask is None:
            out = torch.bmm(probs, v)
        else:
            out = torch.bmm(torch.where(mask, probs, 0.0), v).mul_(ctx.keep_scale)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, probs, mask)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, probs, mask = ctx.saved_tensors
        if mask is not None:
            grad_out = grad_out * ctx.keep_scale
        kept = probs if mask is None else torch.where(mask, probs, 0.0)
        grad_v = torch.bmm(kept.transpose(1, 2), grad_out)
        del kept
        grad_probs = torch.bmm(grad_out, v.transpose(1, 2))
        if mask is not None:
            grad_probs = grad_probs.masked_fill_(~mask, 0.0)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        grad_q = torch.bmm(grad_scores, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.scale)
        grad_bias = grad_scores if ctx.needs_input_grad[3] else None
        return grad_q, grad_k, grad_v, grad_bias, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
              dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p, scale)``, math path,
    with the bias differentiable. q, k, v [B, heads, T, d]; bias [B, heads, Tq, Tk] (-inf masks)."""
    B, heads, Tq, d = q.shape
    Tk = k.shape[2]
    bias = bias.expand(B, heads, Tq, Tk).to(q.dtype)
    out = _Attention.apply(q.reshape(B * heads, Tq, d), k.reshape(B * heads, Tk, d),
                           v.reshape(B * heads, Tk, d), bias.reshape(B * heads, Tq, Tk),
                           float(scale), float(dropout_p))
    return out.view(B, heads, Tq, d)
