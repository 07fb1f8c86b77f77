"""Zero-padding of variable-length arrays into a batch with its mask. Training's collator and
prediction both batch this way, so a model sees the same padding and masks in both."""
from __future__ import annotations

import numpy as np
import torch


def pad_sequences(arrays: list[np.ndarray | None], tail: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length arrays into a zero-padded tensor [B, L, *tail] and mask [B, L]."""
    lengths = [0 if a is None else len(a) for a in arrays]
    B, L = len(arrays), max(lengths, default=0)
    out = torch.zeros((B, L, *tail), dtype=torch.float32)
    mask = torch.zeros((B, L), dtype=torch.bool)
    for i, (a, n) in enumerate(zip(arrays, lengths)):
        if n:
            out[i, :n] = torch.from_numpy(np.asarray(a, dtype=np.float32))
            mask[i, :n] = True
    return out, mask
