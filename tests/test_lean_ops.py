"""model/lean_ops.py: the same dropout and attention as torch's, keeping less for backward."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foalnet.model.lean_ops import attention, dropout


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


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(5, 3)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x


def test_dropout_saves_one_byte_per_element():
    x = torch.randn(64, 1024, requires_grad=True)
    assert _saved_bytes(lambda: dropout(x, 0.1, True)) == 64 * 1024
    assert _saved_bytes(lambda: F.dropout(x, 0.1, True)) == 4 * 64 * 1024  # torch: a float mask


def _attention_inputs(seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    B, H, T, d = 2, 3, 7, 4
    q, k, v = (torch.randn(B, H, T, d, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3))
    bias = torch.randn(B, H, T, T, generator=gen, dtype=dtype)
    bias[1, :, :, 5:] = -math.inf  # padded keys of item 1
    return q, k, v, bias.requires_grad_()


def test_attention_equals_sdpa_outputs_and_gradients():
    q, k, v, bias = _attention_inputs()
    scale = 0.3
    target = torch.randn(2, 3, 7, 4, dtype=torch.float64)

    def grads(fn):
        out = fn()
        return (out, *torch.autograd.grad((out * target).sum(), (q, k, v, bias)))

    ours = grads(lambda: attention(q, k, v, bias, scale))
    ref = grads(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_attention_dropout_drops_probabilities_like_the_math_path():
    """Same keep mask (same seed) -> the reference computed by hand from it; gradients too."""
    q, k, v, bias = _attention_inputs(seed=1)
    p, scale = 0.3, 0.5
    torch.manual_seed(5)
    ours = attention(q, k, v, bias, scale, dropout_p=p)
    torch.manual_seed(5)
    keep = torch.empty(6, 7, 7, dtype=torch.bool).bernoulli_(1 - p).view(2, 3, 7, 7)
    probs = torch.softmax(scale * q @ k.transpose(-1, -2) + bias, dim=-1)
    ref = (probs * keep / (1 - p)) @ v
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    g_ours = torch.autograd.grad(ours.sum(), (q, k, v, bias))
    g_ref = torch.autograd.grad(ref.sum(), (q, k, v, bias))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_attention_saves_less_than_the_math_path():
    q, k, v, bias = (t.detach().float().requires_grad_() for t in _attention_inputs())
    ours = _saved_bytes(lambda: attention(q, k, v, bias, 0.5, dropout_p=0.1))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        ref = _saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.1))
    maps = 2 * 3 * 7 * 7
    assert ours == 3 * q.numel() * 4 + maps * 4 + maps  # q, k, v + probabilities (float) + keep mask (bool)
    assert ref - ours >= 2 * maps * 4 - maps  # torch: a float mask and the dropped probabilities too
