"""foalnet.model: the Foal-Net network (spec §1), its losses, audio encoders and weight import."""
from __future__ import annotations

__all__ = ["FoalNet", "FoalNetConfig", "FoalNetOutput"]


def __getattr__(name: str):
    # Lazy, so that `foalnet --help` (which imports model.commands) does not import torch.
    if name in __all__:
        from foalnet.model import foalnet as _model

        return getattr(_model, name)
    raise AttributeError(f"module 'foalnet.model' has no attribute {name!r}")
