"""foalnet.model: the Foal-Net network (SPEC §1), its losses, audio encoders and weight import."""
from __future__ import annotations

from foalnet.model.foalnet import FoalNet, FoalNetConfig, FoalNetOutput

__all__ = ["FoalNet", "FoalNetConfig", "FoalNetOutput"]
