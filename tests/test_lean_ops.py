"""model/lean_ops.py: the same dropout and attention as torch's, keeping less for backward."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foalnet.model.lean_ops import (draw_keep, dropout, gated_bias_attention, gelu_dropout_linear, keep_threshold,
                                    masked_attention)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_dropout_keeps_with_probability_1_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.005)
    assert torch.allclose(y.detach()[kept], torch.tensor(1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx = mask / (1 - p)


def test_keep_threshold_by_hand():
    # keep iff a uniform int32 >= threshold: 2^31 - threshold of the 2^32 values are kept
    assert keep_threshold(0.25) == -2**30  # 3/4 of the values kept
    assert keep_threshold(0.5) == 0
    assert keep_threshold(0.1) == 429496730 - 2**31  # round(0.1 * 2^32) values dropped
    assert keep_threshold(1 - 2**-40) == 2**31 - 1  # int32's largest value: one in 2^32 kept


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_draw_keep_rate_and_independent_lanes(p):
    """Every draw, even and odd positions alike (the two halves of one random word), is kept
    with probability 1 - p, independently of its neighbour."""
    torch.manual_seed(1)
    keep = draw_keep(torch.empty(400_001, dtype=torch.bool), p)  # odd: the last word is half used
    even, odd = keep[:-1:2].float(), keep[1::2].float()
    tol = 4 * math.sqrt(p * (1 - p) / even.numel())
    assert even.mean().item() == pytest.approx(1 - p, abs=tol)
    assert odd.mean().item() == pytest.approx(1 - p, abs=tol)
    assert (even * odd).mean().item() == pytest.approx((1 - p) ** 2, abs=tol)


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(5, 3)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x


def test_dropout_saves_one_byte_per_element():
    x = torch.randn(64, 1024, requires_grad=True)
    assert _saved_bytes(lambda: dropout(x, 0.1, True)) == 64 * 1024
    assert _saved_bytes(lambda: F.dropout(x, 0.1, True)) == 4 * 64 * 1024  # torch: a float mask


def _attention_inputs(seed: int = 0, dtype=torch.float64, B: int = 3, H: int = 2, T: int = 7, d: int = 4):
    """q, k, v, gate, position_bias, key_bias as WavLM's packed attention passes them (q, gate:
    views of a [B, T, heads, ...] layout; item 1 has 5 valid keys, item 2 one)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, d, generator=gen, dtype=dtype).transpose(1, 2).requires_grad_()
    k, v = (torch.randn(B, H, T, d, generator=gen, dtype=dtype, requires_grad=True) for _ in range(2))
    gate = torch.rand(B, T, H, 1, generator=gen, dtype=dtype).permute(0, 2, 1, 3).detach().requires_grad_()
    position_bias = torch.randn(T, T, H, generator=gen, dtype=dtype).permute(2, 0, 1).detach().requires_grad_()
    lengths = torch.tensor([T, 5, 1][:B])
    key_bias = torch.zeros(B, 1, 1, T, dtype=dtype).masked_fill(
        torch.arange(T) >= lengths[:, None, None, None], -math.inf)
    return q, k, v, gate, position_bias, key_bias


DIFFERENTIABLE = slice(0, 5)  # q, k, v, gate, position_bias


@pytest.mark.parametrize("chunk_bytes", [1, 2**30])  # one item per slice; the whole batch at once
def test_gated_bias_attention_equals_sdpa_outputs_and_gradients(monkeypatch, chunk_bytes):
    from foalnet.model import lean_ops

    monkeypatch.setattr(lean_ops, "MAP_CHUNK_BYTES", chunk_bytes)
    inputs = _attention_inputs()
    q, k, v, gate, position_bias, key_bias = inputs
    scale = 0.3
    target = torch.randn(3, 2, 7, 4, dtype=torch.float64)

    def grads(fn):
        out = fn()
        return (out, *torch.autograd.grad((out * target).sum(), inputs[DIFFERENTIABLE]))

    ours = grads(lambda: gated_bias_attention(q, k, v, gate, position_bias, key_bias, scale))
    bias = gate * position_bias + key_bias
    ref = grads(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gated_bias_attention_dropout_drops_probabilities_like_the_math_path(monkeypatch):
    """Same keep mask (same seed, drawn slice by slice in batch order = one draw for the whole
    [B*heads, T, T]) -> the reference computed by hand from it; gradients too."""
    from foalnet.model import lean_ops

    monkeypatch.setattr(lean_ops, "MAP_CHUNK_BYTES", 1)
    inputs = _attention_inputs(seed=1)
    q, k, v, gate, position_bias, key_bias = inputs
    p, scale = 0.3, 0.5
    torch.manual_seed(5)
    ours = gated_bias_attention(q, k, v, gate, position_bias, key_bias, scale, dropout_p=p)
    torch.manual_seed(5)
    # drawn slice by slice (one item: 98 draws, a whole number of 64-bit words): the same as at once
    keep = lean_ops.draw_keep(torch.empty(6, 7, 7, dtype=torch.bool), p).view(3, 2, 7, 7)
    probs = torch.softmax(scale * q @ k.transpose(-1, -2) + gate * position_bias + key_bias, dim=-1)
    ref = (probs * keep / (1 - p)) @ v
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    g_ours = torch.autograd.grad(ours.sum(), inputs[DIFFERENTIABLE])
    g_ref = torch.autograd.grad(ref.sum(), inputs[DIFFERENTIABLE])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gated_bias_attention_gradcheck_with_dropout():
    inputs = _attention_inputs(seed=2, B=2, T=5)

    def fn(q, k, v, gate, position_bias):
        torch.manual_seed(3)  # the same keep mask at every evaluation
        return gated_bias_attention(q, k, v, gate, position_bias, inputs[5], 0.7, dropout_p=0.25)

    assert torch.autograd.gradcheck(fn, inputs[DIFFERENTIABLE])


def test_gated_bias_attention_keeps_no_attention_map():
    q, k, v, gate, position_bias, key_bias = (t.detach().float().requires_grad_(t.requires_grad)
                                              for t in _attention_inputs())
    ours = _saved_bytes(lambda: gated_bias_attention(q, k, v, gate, position_bias, key_bias, 0.5, dropout_p=0.1))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def math_path():
        F.scaled_dot_product_attention(q, k, v, attn_mask=gate * position_bias + key_bias, dropout_p=0.1)

    with sdpa_kernel(SDPBackend.MATH):
        ref = _saved_bytes(math_path)
    B, H, T, d = q.shape
    maps = B * H * T * T
    inputs = 4 * (3 * q.numel() + gate.numel() + position_bias.numel() + key_bias.numel())
    assert ours == inputs + maps  # the inputs + the keep mask (bool): no float [B, H, T, T] map
    assert ref - ours >= 2 * maps * 4  # torch: at least the probabilities and the dropped ones, float


def test_gelu_dropout_linear_equals_the_modules_with_the_same_masks():
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    linear = torch.nn.Linear(6, 3).double()
    params = (h, linear.weight, linear.bias)
    for p, training in ((0.0, True), (0.4, True), (0.4, False)):
        torch.manual_seed(7)
        ours = gelu_dropout_linear(h, linear.weight, linear.bias, p, training)
        torch.manual_seed(7)
        ref = linear(dropout(F.gelu(h), p, training))
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        target = torch.randn_like(ours)
        for a, b in zip(torch.autograd.grad((ours * target).sum(), params), torch.autograd.grad((ref * target).sum(), params)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gelu_dropout_linear_keeps_no_activation():
    h = torch.randn(64, 256, requires_grad=True)
    linear = torch.nn.Linear(256, 32)
    ours = _saved_bytes(lambda: gelu_dropout_linear(h, linear.weight, linear.bias, 0.1, True))
    ref = _saved_bytes(lambda: linear(dropout(F.gelu(h), 0.1, True)))
    assert ours == 4 * h.numel() + 4 * linear.weight.numel() + h.numel()  # h, weight, bool mask
    assert ref - ours == 4 * h.numel()  # the modules keep the dropped GELU output too


@pytest.mark.parametrize("chunk_bytes", [1, 2**30])
def test_masked_attention_with_kv_index_equals_sdpa_on_gathered_rows(monkeypatch, chunk_bytes):
    """Query row r attends to context row kv_index[r] (MEM's [V; V_neg]); the gradients of a
    context row used twice add up."""
    from foalnet.model import lean_ops

    monkeypatch.setattr(lean_ops, "MAP_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(4, 6, 2, 3, generator=gen, dtype=torch.float64).transpose(1, 2).requires_grad_()
    k, v = (torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    index = torch.tensor([0, 1, 1, 1])
    keys = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool).index_select(0, index)[:, None, None, :]
    key_bias = torch.zeros(keys.shape, dtype=torch.float64).masked_fill(~keys, -math.inf)
    target = torch.randn(4, 2, 6, 3, generator=gen, dtype=torch.float64)
    ours = masked_attention(q, k, v, key_bias, 0.4, kv_index=index)
    ref = F.scaled_dot_product_attention(q, k.index_select(0, index), v.index_select(0, index), attn_mask=keys, scale=0.4)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    g_ours = torch.autograd.grad((ours * target).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * target).sum(), (q, k, v))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
