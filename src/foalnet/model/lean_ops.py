"""Dropout, attention and feed-forward pieces that keep less for the backward pass (same
functions as torch's).

``F.dropout`` saves a float32 mask (4 bytes per element); here a bool mask (1 byte). The math
attention path of ``scaled_dot_product_attention`` (the one taken on CPU when the attention bias
needs a gradient, as WavLM's gated relative position bias does) keeps the softmax output, a float
dropout mask and the dropped-out probabilities, three [B, heads, T, T] tensors per layer, and
WavLM builds the [B, heads, T, T] bias as a fourth. ``gated_bias_attention`` keeps none of them:
only q, k, v, the gate, the shared bias and a bool mask; it builds the maps slice by slice and
rebuilds them in backward (one more q k^T product, less time overall on this CPU: the maps stay
in cache). ``gelu_dropout_linear`` recomputes the feed-forward's GELU output in backward instead of
keeping it. Same dropout masks as ``dropout`` draws, same outputs and gradients
(tests/test_lean_ops.py against torch's own ops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def keep_threshold(p: float) -> int:
    """The int32 value at or above which a uniform int32 is kept: P(keep) = 1 - p to 2^-32
    (torch's own Bernoulli draw compares a float32 uniform, resolution 2^-24)."""
    return min(round(p * 2**32) - 2**31, 2**31 - 1)


def draw_keep(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Fill the contiguous bool tensor ``mask`` with Bernoulli(1 - p) keep draws, from torch's
    default generator. Full-range 64-bit random words are cut into int32 lanes and compared with
    a threshold: on this CPU 2.6x less time than ``bernoulli_`` (dropout draws were 7 % of a
    training step)."""
    if mask.device.type not in ("cpu", "cuda"):  # full-range int64 draws: CPU and CUDA kernels
        return mask.bernoulli_(1.0 - p)
    count = mask.numel()
    words = torch.empty(((count + 1) // 2,), dtype=torch.int64, device=mask.device).random_(-2**63, None)
    lanes = words.view(torch.int32)[:count]
    return torch.ge(lanes, keep_threshold(p), out=mask.view(-1)).view(mask.shape)


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask, bool."""
    return draw_keep(torch.empty(shape, dtype=torch.bool, device=device), p)


def _apply_keep(x: torch.Tensor, mask: torch.Tensor | None, p: float, inplace: bool = False) -> torch.Tensor:
    """Dropout with a drawn keep mask: x where kept, scaled by 1/(1-p), zero elsewhere (the same
    for a gradient). ``inplace`` for a temporary nothing else holds."""
    if mask is None:
        return x
    kept = x.masked_fill_(~mask, 0.0) if inplace else torch.where(mask, x, 0.0)
    return kept.mul_(1.0 / (1.0 - p))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = _keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(mask)
        ctx.p = p
        return _apply_keep(x, mask, p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return _apply_keep(grad, mask, ctx.p), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` that saves a bool mask for backward."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return _Dropout.apply(x, float(p))


# Attention maps are built, used and (in backward) rebuilt in slices of the batch of at most this
# many bytes, so no [B, heads, T, T] float tensor ever exists whole.
MAP_CHUNK_BYTES = 32 * 2**20


def _batch_slices(batch: int, bytes_per_item: int) -> list[tuple[int, int]]:
    step = max(1, min(batch, MAP_CHUNK_BYTES // max(bytes_per_item, 1)))
    return [(start, min(start + step, batch)) for start in range(0, batch, step)]


class _GatedBiasAttention(torch.autograd.Function):
    """softmax(scale * q k^T + gate * position_bias + key_bias) -> dropout -> @ v.

    q, k, v [B, heads, T, d]; gate [B, heads, T, 1]; position_bias [heads, T, Tk]; key_bias
    [B, 1, 1, Tk] (0 or -inf); gate and position_bias may both be None (key padding only).
    Keeps q, k, v, the gate, the shared bias and the bool dropout mask (not the output);
    the probabilities are recomputed in backward from the same operations (bit-identical), one
    slice of the batch at a time. The 1/(1-p) of dropout goes on the [T, d] side."""

    @staticmethod
    def _probabilities(q, k, gate, position_bias, key_bias, scale: float, b0: int, b1: int) -> torch.Tensor:
        """Attention probabilities of query rows b0:b1, [(b1 - b0) * heads, T, Tk]; k: their rows."""
        _, heads, T, d = q.shape
        n, Tk = (b1 - b0) * heads, k.shape[2]
        q_rows, k_cols = q[b0:b1].reshape(n, T, d), k.reshape(n, Tk, d).transpose(1, 2)
        if gate is None:  # key padding only: the [n, 1, Tk] bias broadcasts over the queries
            key_rows = key_bias[b0:b1].expand(b1 - b0, heads, 1, Tk).reshape(n, 1, Tk)
            return torch.baddbmm(key_rows, q_rows, k_cols, alpha=scale).softmax(dim=-1)
        scores = q.new_empty((b1 - b0, heads, T, Tk))
        torch.addcmul(key_bias[b0:b1], gate[b0:b1], position_bias, out=scores)
        return scores.view(n, T, Tk).baddbmm_(q_rows, k_cols, alpha=scale).softmax(dim=-1)

    @staticmethod
    def forward(ctx, q, k, v, gate, position_bias, key_bias, scale: float, p: float, kv_index):
        ctx.input_dtypes = [t.dtype if t is not None else None for t in (k, v, gate, position_bias)]
        with _no_autocast(q):
            return _GatedBiasAttention._forward(ctx, q, k, v, gate, position_bias, key_bias, scale, p, kv_index)

    @staticmethod
    def _forward(ctx, q, k, v, gate, position_bias, key_bias, scale: float, p: float, kv_index):
        # everything in q's dtype (under autocast: the projections' low precision); one
        # [B, heads, T, d] copy each of q, k, v, kept for backward (slices of it are then views)
        q, k, v = q.contiguous(), k.to(q.dtype).contiguous(), v.to(q.dtype).contiguous()
        gate, position_bias = (t.to(q.dtype) if t is not None else None for t in (gate, position_bias))
        key_bias = key_bias.to(q.dtype)
        B, heads, T, _ = q.shape
        Tk, dv = k.shape[2], v.shape[-1]
        mask = torch.empty((B * heads, T, Tk), dtype=torch.bool, device=q.device) if p > 0.0 else None
        out = q.new_empty((B * heads, T, dv))
        for b0, b1 in _batch_slices(B, heads * T * Tk * q.element_size()):
            rows, n = slice(b0 * heads, b1 * heads), (b1 - b0) * heads
            probs = _GatedBiasAttention._probabilities(q, _rows(k, kv_index, b0, b1), gate, position_bias,
                                                       key_bias, scale, b0, b1)
            if mask is not None:
                probs = probs.masked_fill_(~draw_keep(mask[rows], p), 0.0)
            torch.bmm(probs, _rows(v, kv_index, b0, b1).reshape(n, Tk, dv), out=out[rows])
        ctx.scale, ctx.keep_scale = scale, (1.0 / (1.0 - p) if p > 0.0 else 1.0)
        ctx.save_for_backward(q, k, v, gate, position_bias, key_bias, mask, kv_index)
        return (out.mul_(ctx.keep_scale) if mask is not None else out).view(B, heads, T, dv)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        with _no_autocast(grad_out):
            grads = _GatedBiasAttention._backward(ctx, grad_out)
        casts = [None] + ctx.input_dtypes  # q's gradient is in q's dtype already
        return tuple(g.to(dtype) if g is not None and dtype is not None else g for g, dtype in zip(grads, casts)) + (None,) * 4

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        q, k, v, gate, position_bias, key_bias, mask, kv_index = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype).contiguous()
        B, heads, T, d = q.shape
        Tk, dv = k.shape[2], v.shape[-1]
        grad_q = q.new_empty((B * heads, T, d))
        # gathered context rows: their gradients add up on the rows they came from
        new_grad = torch.zeros if kv_index is not None else torch.empty
        grad_k = new_grad(k.shape, dtype=k.dtype, device=k.device)
        grad_v = new_grad(v.shape, dtype=v.dtype, device=v.device)
        grad_gate = gate.new_empty(gate.shape) if ctx.needs_input_grad[3] else None
        grad_bias = torch.zeros_like(position_bias) if ctx.needs_input_grad[4] else None
        for b0, b1 in _batch_slices(B, heads * T * Tk * q.element_size()):
            rows, n = slice(b0 * heads, b1 * heads), (b1 - b0) * heads
            k_rows, v_rows = _rows(k, kv_index, b0, b1), _rows(v, kv_index, b0, b1)
            probs = _GatedBiasAttention._probabilities(q, k_rows, gate, position_bias, key_bias, ctx.scale, b0, b1)
            grad = grad_out[b0:b1].reshape(n, T, dv)
            if mask is not None:
                grad = grad * ctx.keep_scale
            dropped = None if mask is None else ~mask[rows]  # one negation for both uses
            kept = probs if dropped is None else probs.masked_fill(dropped, 0.0)
            _bmm_into_rows(grad_v, kv_index, b0, b1, kept.transpose(1, 2), grad)
            del kept
            grad_probs = torch.bmm(grad, v_rows.reshape(n, Tk, dv).transpose(1, 2))
            if dropped is not None:
                grad_probs.masked_fill_(dropped, 0.0)
            del dropped
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            del grad_probs, probs
            torch.bmm(grad_scores, k_rows.reshape(n, Tk, d), out=grad_q[rows])
            _bmm_into_rows(grad_k, kv_index, b0, b1, grad_scores.transpose(1, 2), q[b0:b1].reshape(n, T, d))
            grad_scores = grad_scores.view(b1 - b0, heads, T, Tk)
            if grad_gate is not None:
                torch.sum(grad_scores * position_bias, dim=-1, keepdim=True, out=grad_gate[b0:b1])
            if grad_bias is not None:
                grad_bias += grad_scores.mul_(gate[b0:b1]).sum(0)
        return grad_q.mul_(ctx.scale).view(B, heads, T, d), grad_k.mul_(ctx.scale), grad_v, grad_gate, grad_bias


def _no_autocast(t: torch.Tensor):
    """Autocast off: these functions cast their inputs themselves, so that the backward pass
    (which autocast does not reach) recomputes exactly what the forward pass computed."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _rows(t: torch.Tensor, index: torch.Tensor | None, b0: int, b1: int) -> torch.Tensor:
    """Rows b0:b1 of t, or the rows ``index[b0:b1]`` picks from it."""
    return t[b0:b1] if index is None else t.index_select(0, index[b0:b1])


def _bmm_into_rows(grad: torch.Tensor, index: torch.Tensor | None, b0: int, b1: int, a: torch.Tensor,
                   b: torch.Tensor) -> None:
    """grad[rows b0:b1] = a @ b, or grad[rows index[b0:b1]] += a @ b (a context row gathered
    twice gets both gradients); grad [M, heads, T, d], a @ b [(b1 - b0) * heads, T, d]."""
    if index is None:
        torch.bmm(a, b, out=grad[b0:b1].view((b1 - b0) * grad.shape[1], *grad.shape[2:]))
    else:
        grad.index_add_(0, index[b0:b1], torch.bmm(a, b).view(b1 - b0, *grad.shape[1:]))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor,
                     scale: float, kv_index: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k[kv_index], v[kv_index], attn_mask=key_bias,
    scale=scale)`` keeping q, k, v for backward (torch's fused CPU kernel keeps its output too,
    and would need the gathered rows). q [B, heads, T, d]; k, v [M, heads, Tk, d] (M = B without
    kv_index); key_bias [B, 1, 1, Tk], 0 for valid keys and -inf for padding, every row with a
    valid key."""
    return _GatedBiasAttention.apply(q, k, v, None, None, key_bias, float(scale), 0.0, kv_index)


def gated_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         position_bias: torch.Tensor, key_bias: torch.Tensor, scale: float,
                         dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=gate * position_bias + key_bias,
    dropout_p, scale)`` (math path, the bias differentiable through gate and position_bias), as
    WavLM's gated relative-position attention needs it, without keeping any [B, heads, T, T] map.

    q, k, v [B, heads, T, d]; gate [B, heads, T, 1]; position_bias [heads, T, Tk]; key_bias
    [B, 1, 1, Tk] with -inf at padded keys (every row needs one valid key)."""
    return _GatedBiasAttention.apply(q, k, v, gate, position_bias, key_bias, float(scale), float(dropout_p), None)


class _GeluDropoutLinear(torch.autograd.Function):
    """linear(dropout(gelu(h)), weight, bias), keeping h and the bool mask: the GELU output (as
    large as h) is recomputed in backward instead of being kept for the weight's gradient."""

    @staticmethod
    def forward(ctx, h, weight, bias, p: float):
        mask = _keep_mask(h.shape, p, h.device) if p > 0.0 else None
        ctx.p, ctx.bias_dtype = p, (bias.dtype if bias is not None else None)
        ctx.save_for_backward(h, weight, mask)
        with _no_autocast(h):  # in h's dtype (under autocast: the first linear's low precision)
            return F.linear(_apply_keep(F.gelu(h), mask, p, inplace=True), weight.to(h.dtype),
                            bias.to(h.dtype) if bias is not None else None)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight, mask = ctx.saved_tensors
        with _no_autocast(h):
            grad_out = grad_out.to(h.dtype)
            grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
            grad_h = grad_weight = grad_bias = None
            if ctx.needs_input_grad[1]:
                a = _apply_keep(F.gelu(h), mask, ctx.p, inplace=True)
                grad_weight = grad_2d.t().mm(a.reshape(-1, a.shape[-1])).to(weight.dtype)
                del a
            if ctx.needs_input_grad[2]:
                grad_bias = grad_2d.sum(0).to(ctx.bias_dtype)
            if ctx.needs_input_grad[0]:
                grad_a = _apply_keep(grad_out.matmul(weight.to(h.dtype)), mask, ctx.p, inplace=True)
                grad_h = torch.ops.aten.gelu_backward(grad_a, h)
        return grad_h, grad_weight, grad_bias, None


def gelu_dropout_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float,
                        training: bool) -> torch.Tensor:
    """``F.linear(dropout(F.gelu(h), p, training), weight, bias)`` (exact GELU; the same keep
    masks as ``dropout`` draws) keeping h and a bool mask for backward."""
    return _GeluDropoutLinear.apply(h, weight, bias, float(p) if training else 0.0)
