"""CLIP image encoder (the paper's: ViT-L/14 projected image embeddings, 768-d), frozen.

Loads `CLIPVisionModelWithProjection` and its image processor with `from_pretrained` from a
hub id (e.g. openai/clip-vit-large-patch14) or a local folder holding config.json, the weights
and preprocessor_config.json. The processor's own resizing, centre crop and normalisation are
used so the features match what the checkpoint was trained with.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from foalnet.features.base import VisualEncoder


def _image_processor_class():
    """The PIL-backed processor when transformers has it (no torchvision needed)."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _weights_digest(model) -> str:
    """Fingerprint of the checkpoint (its projection and first patch weights), for cache keys."""
    h = hashlib.sha1()
    for tensor in (model.visual_projection.weight,
                   model.vision_model.embeddings.patch_embedding.weight):
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


class ClipVisualEncoder(VisualEncoder):
    """Projected CLIP image embeddings (`image_embeds`), one per frame, float32 (N, D)."""

    def __init__(self, name: str, device: str = "cpu", dtype: str = "float32"):
        if name.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(name)):
            raise FileNotFoundError(f"{name}: no such checkpoint folder")
        import torch
        from transformers import CLIPVisionModelWithProjection

        # a local folder is recorded by its absolute path, so inference finds it from anywhere
        self.name = os.path.abspath(os.path.expanduser(name)) if os.path.isdir(name) else name
        self.device = torch.device(device)
        self.torch_dtype = getattr(torch, dtype)
        self.processor = _image_processor_class().from_pretrained(name)
        model = CLIPVisionModelWithProjection.from_pretrained(name)
        self.model = model.to(self.device, self.torch_dtype).eval().requires_grad_(False)
        self.dim = int(model.config.projection_dim)
        self._digest = _weights_digest(model)

    def settings(self) -> dict:
        cfg = self.model.config
        proc = self.processor
        return {
            "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "patch_size": cfg.patch_size,
            "image_size": cfg.image_size,
            "projection_dim": cfg.projection_dim,
            "size": dict(proc.size) if proc.size is not None else None,
            "crop_size": dict(proc.crop_size) if getattr(proc, "crop_size", None) else None,
            "image_mean": list(proc.image_mean),
            "image_std": list(proc.image_std),
            "torch_dtype": str(self.torch_dtype).replace("torch.", ""),
            "weights_sha1": self._digest,
        }

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """frames (N, H, W, 3) uint8 -> (N, projection_dim) float32."""
        import torch

        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.torch_dtype)  # (N, 3, h, w)
        with torch.inference_mode():
            embeds = self.model(pixel_values=pixels).image_embeds  # (N, D)
        return embeds.float().cpu().numpy()
