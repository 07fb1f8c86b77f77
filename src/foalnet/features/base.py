"""Frozen visual encoders: the shared interface, the registry and the name -> encoder builder.

An encoder file only maps images to vectors (`embed`); batching of frames of different sizes,
settings for the cache key and the folder name live here. Adding an encoder = one new file with
a `VisualEncoder` subclass + one line in `ENCODERS`.
"""
from __future__ import annotations

import importlib
import os
import re
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from foalnet.data.files import FileProblem

# name -> "module:Class". Any other name is a CLIP checkpoint (hub id or local folder).
ENCODERS: dict[str, str] = {
    "tiny": "foalnet.features.tiny:TinyVisualEncoder",
}
DEFAULT_ENCODER = "foalnet.features.clip:ClipVisualEncoder"


class FeatureError(FileProblem):
    """A cached feature is missing, unreadable or not what the store promises."""


class VisualEncoder(ABC):
    """A frozen image encoder: uint8 RGB frames (N, H, W, 3) -> float32 (N, D)."""

    name: str  # what the user typed (registry name, hub id or folder)
    dim: int

    @abstractmethod
    def settings(self) -> dict:
        """Everything besides the name that changes the output (goes into the cache key)."""

    @abstractmethod
    def embed(self, frames: np.ndarray) -> np.ndarray:
        """frames (N, H, W, 3) uint8 of one size -> (N, D) float32."""

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images of possibly different sizes (face crops) -> (N, D) float32, input order."""
        N = len(images)
        out = np.empty((N, self.dim), dtype=np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for rows in by_shape.values():
            out[rows] = self.embed(np.stack([images[i] for i in rows]))
        return out

    @property
    def slug(self) -> str:
        return encoder_slug(self.name)

    def describe(self) -> dict:
        return {"encoder": self.name, "dim": self.dim, "settings": self.settings()}


def encoder_slug(name: str) -> str:
    """Folder-safe name: `tiny`, `openai--clip-vit-large-patch14`, a local folder's basename."""
    name = str(name)
    if os.path.isdir(name) or name.startswith(("/", ".", "~")):
        name = os.path.basename(os.path.normpath(os.path.expanduser(name)))
    name = name.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "encoder"


def _load_class(spec: str) -> type[VisualEncoder]:
    module_name, class_name = spec.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_visual_encoder(name_or_path: str, device: str = "cpu") -> VisualEncoder:
    """`tiny` (offline) or any registered name; otherwise a CLIP checkpoint (hub id or folder)."""
    spec = ENCODERS.get(name_or_path, DEFAULT_ENCODER)
    return _load_class(spec)(name_or_path, device=device)
