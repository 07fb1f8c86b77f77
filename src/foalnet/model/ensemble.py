"""Several Foal-Nets trained with different seeds, scored as one model: their class
probabilities averaged.

Why: on a few hundred real clips one trained model's test UA moves by up to 8 points with the
seed alone (docs/benchmarks.md, "The offline audio path on real speech"); the average of the
probabilities of independently trained members is steadier and better than a typical member
(Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty estimation using deep
ensembles"). Each member is an unchanged FoalNet with its own saved folder.

An ensemble folder holds ``ensemble.json`` (``{"model_type": "foalnet_ensemble", "members":
["member1", ...]}``, folder names relative to it) and one ``FoalNet.save_pretrained`` folder per
member. ``load_model`` opens either kind of folder.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from foalnet.model.audio import write_json_atomic
from foalnet.model.foalnet import CONFIG_NAME, FoalNet, FoalNetOutput

ENSEMBLE_FILE = "ensemble.json"
SHARED_SETTINGS = ("labels", "modality", "video_dim", "visual_encoder", "visual_settings", "sample_rate")


class FoalNetEnsemble(nn.Module):
    """FoalNet members whose softmax outputs are averaged; ``logits`` are the log of that average,
    so ``softmax(logits)`` is the mean of the members' probabilities."""

    def __init__(self, members: list[FoalNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0].config
        for i, member in enumerate(members[1:], start=2):
            differ = [name for name in SHARED_SETTINGS
                      if getattr(member.config, name, None) != getattr(first, name, None)]
            if differ:
                raise ValueError(f"ensemble member {i} differs from member 1 in {', '.join(differ)}")
        self.members = nn.ModuleList(members)
        self.config = first

    @property
    def labels(self) -> list[str]:
        return self.members[0].labels

    def forward(self, **inputs: torch.Tensor | None) -> FoalNetOutput:
        """The members' forward passes on the same inputs (no labels: scoring only)."""
        log_probs = torch.stack([torch.log_softmax(m(**inputs).logits.float(), dim=-1) for m in self.members])
        logits = torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
        return FoalNetOutput(loss=None, losses={}, logits=logits, audio_embeds=None, video_embeds=None)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"
                        ) -> "FoalNetEnsemble":
        folder = Path(directory)
        spec = json.loads((folder / ENSEMBLE_FILE).read_text())
        names = spec.get("members") if spec.get("model_type") == "foalnet_ensemble" else None
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{folder / ENSEMBLE_FILE}: expected model_type foalnet_ensemble and a "
                             "list of member folders")
        return cls([FoalNet.from_pretrained(folder / name, map_location) for name in names])


def is_model_folder(path: Path) -> bool:
    """A FoalNet folder (config.json) or an ensemble folder (ensemble.json)."""
    return (path / CONFIG_NAME).is_file() or (path / ENSEMBLE_FILE).is_file()


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu"
               ) -> FoalNet | FoalNetEnsemble:
    """``FoalNet.from_pretrained`` or, for a folder with ensemble.json, the ensemble."""
    folder = Path(directory)
    if (folder / ENSEMBLE_FILE).is_file():
        return FoalNetEnsemble.from_pretrained(folder, map_location)
    return FoalNet.from_pretrained(folder, map_location)


def save_ensemble_folder(out: str | os.PathLike, member_dirs: list[Path]) -> Path:
    """Write an ensemble folder at ``out`` from saved member folders: each member's files linked
    (hard links: no second copy on disk; copied where links are not possible) as member<k>/."""
    out = Path(out)
    names = [f"member{k}" for k in range(1, len(member_dirs) + 1)]
    for name, source in zip(names, member_dirs):
        if not (Path(source) / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{source}: no {CONFIG_NAME}, not a saved member model")
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, copy_function=_link_or_copy)
    write_json_atomic(out / ENSEMBLE_FILE, {"model_type": "foalnet_ensemble", "members": names})
    return out


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
