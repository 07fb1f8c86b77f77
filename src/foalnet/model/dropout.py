"""Dropout that keeps a 1-byte mask for the backward pass on every device.

``F.dropout`` on a CUDA tensor runs torch's ``native_dropout`` kernel, which returns the output and
a boolean mask and backpropagates through the mask. On CPU, torch 2.13's ``F.dropout`` multiplies
the input by a float "noise" tensor instead, and autograd keeps that float tensor: 4 bytes per
element where 1 would do. In a training step of the 2-layer WavLM-Large-width encoder (batch 16,
IEMOCAP-like lengths, ``benchmarks/train_step.py``) the float masks of the layers' and the fusion's
dropouts held 0.19 GiB. Here (the fusion, the AVEL projections, the packed WavLM layers) every device calls ``torch.native_dropout`` (the same kernel,
distribution and scaling as ``F.dropout``; only the random draw order differs on CPU), so the
mask costs a quarter of that. ``Dropout`` is ``nn.Dropout`` with this forward: the same module
name and state dict, so checkpoints are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``: zero each element with probability p, scale the rest by
    1 / (1 - p); the backward pass keeps a boolean mask."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return torch.native_dropout(x, p, True)[0]


def module_dropout(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a ``nn.Dropout`` (e.g. inside transformers' WavLM layers), by :func:`dropout`."""
    return dropout(x, module.p, module.training)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose backward keeps a boolean mask (:func:`dropout`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
