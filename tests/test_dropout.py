"""foalnet's dropout: F.dropout's function, with a boolean mask kept for the backward pass."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foalnet.model.dropout import Dropout, dropout, module_dropout


def test_kept_elements_are_scaled_by_one_over_keep_and_the_drop_rate_is_p():
    torch.manual_seed(0)
    x = torch.full((200_000,), 3.0)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 4.0))  # 3 / 0.75
    assert (~kept).float().mean().item() == pytest.approx(0.25, abs=0.005)  # 5 sigma is 0.0048


def test_gradient_is_the_mask_over_keep_and_the_saved_mask_is_boolean():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dropout(x, 0.5, training=True)
    weights = torch.randn(64, 32)
    (y * weights).sum().backward()
    kept = (y != 0).float()
    torch.testing.assert_close(x.grad, weights * kept * 2.0)
    assert [t.dtype for t in saved] == [torch.bool]  # 1 byte per element, not a float "noise" tensor


def test_identity_in_eval_and_at_p0_and_zero_at_p1():
    x = torch.randn(10, requires_grad=True)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros(10))


def test_module_is_an_nn_dropout_with_the_same_state_and_mode():
    module = Dropout(0.2)
    assert isinstance(module, nn.Dropout) and module.state_dict() == {} and "p=0.2" in repr(module)
    x = torch.randn(1000)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(x) == 0).any()
    torch.manual_seed(3)
    a = module_dropout(nn.Dropout(0.2), x)
    torch.manual_seed(3)
    assert torch.equal(a, module(x))


def test_half_precision_keeps_its_dtype():
    x = torch.randn(100, dtype=torch.bfloat16)
    assert dropout(x, 0.1, training=True).dtype == torch.bfloat16
