"""foalnet: Foal-Net audio-video emotion recognition (Interspeech 2024)."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["FoalNet", "FoalNetConfig", "FoalNetOutput", "Predictor", "__version__"]


def __getattr__(name: str):
    # Lazy so that `foalnet --help` and data preparation do not import torch/transformers.
    if name in ("FoalNet", "FoalNetConfig", "FoalNetOutput"):
        from foalnet.model import foalnet as _model

        return getattr(_model, name)
    if name == "Predictor":
        from foalnet.infer.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'foalnet' has no attribute {name!r}")
