"""`tiny`: an offline, deterministic, cheap image encoder for tests and the synthetic corpus.

No download, numpy only. Grey levels of the largest centred square are area-averaged to a
32x32 grid (the face's mouth corners, brows and eyes stay visible as a few cells each),
standardised per image (so lighting does not matter), and mapped to 128 dimensions by a fixed
random sign projection drawn from a seeded generator. Output: float32 (N, 128); the
model's `tiny` preset uses video_dim = 128.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from foalnet.features.base import VisualEncoder
from foalnet.errors import UsageError

GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma


def area_thumbnail(square: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, size, size) float32 grey block means (nearest cells if S < size).

    Sums rows of each block first (contiguous memory), then columns, in integers: this is
    several times faster than averaging float copies of the frames.
    """
    N, S, _, C = square.shape
    if S < size:
        idx = (np.arange(size) * S) // size
        return square[:, idx][:, :, idx].astype(np.float32) @ GREY
    k = S // size
    off = (S - k * size) // 2
    square = square[:, off: off + k * size, off: off + k * size]
    rows = square.reshape(N * size, k, k * size * C).sum(axis=1, dtype=np.uint32)
    blocks = rows.reshape(N, size, size, k, C).sum(axis=3, dtype=np.uint32)  # (N, size, size, C)
    return (blocks.astype(np.float32) @ GREY) / (k * k)


def centre_square(frames: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square of side fraction * min(H, W) of (N, H, W, C) frames."""
    N, H, W, C = frames.shape
    side = max(1, int(round(min(H, W) * fraction)))
    top, left = (H - side) // 2, (W - side) // 2
    return frames[:, top: top + side, left: left + side]


class TinyVisualEncoder(VisualEncoder):
    """Grey 32x32 area thumbnail, standardised, fixed seeded projection to 128 dims."""

    def __init__(self, name: str = "tiny", device: str = "cpu", size: int = 32, dim: int = 128,
                 fraction: float = 1.0, seed: int = 0):
        if size < 4 or dim < 1 or not 0 < fraction <= 1:
            raise UsageError(f"tiny encoder: bad size={size}, dim={dim} or fraction={fraction}")
        self.name = name
        self.dim = dim
        self.size = size
        self.fraction = fraction
        self.seed = seed
        # Random signs (integers only: the same bits on every platform), scaled so that a
        # standardised thumbnail maps to about unit variance per output dimension.
        signs = np.random.default_rng(seed).integers(0, 2, size=(size * size, dim), dtype=np.int8)
        self.projection = ((2.0 * signs - 1.0) / np.sqrt(size * size)).astype(np.float32)  # (P, D)
        self._digest = hashlib.sha1(self.projection.tobytes()).hexdigest()[:12]

    def settings(self) -> dict:
        return {"size": self.size, "dim": self.dim, "fraction": self.fraction,
                "seed": self.seed, "projection_sha1": self._digest}

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """frames (N, H, W, 3) uint8 -> (N, 128) float32."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UsageError(f"expected (N, H, W, 3) frames, got {frames.shape}")
        return self.embed_images(list(frames))

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images of any sizes -> (N, 128) float32; thumbnails are made one image at a time
        (no copy of the batch of full frames)."""
        thumbs = [area_thumbnail(centre_square(image[None], self.fraction), self.size)
                  for image in images]
        thumb = np.concatenate(thumbs).reshape(len(images), -1)  # (N, P)
        thumb -= thumb.mean(axis=1, keepdims=True)
        thumb /= thumb.std(axis=1, keepdims=True) + 1e-3
        return thumb @ self.projection  # (N, D), about unit variance per dimension
