"""Import a state_dict of the original Foal-Net ``MultiTaskModel`` (ASolitaryMan/Foal-Net).

Key layout of the original -> foalnet:

    wavlm.*                        -> audio_encoder.model.*     (weight-norm names converted)
    a2v.{i}.{w_q,w_k,w_v,w_concat,ln}.*  -> a2v.layers.{i}.{q_proj,k_proj,v_proj,out_proj,norm}.*
    v2a.{i}.*                      -> v2a.layers.{i}.*          (same leaf names)
    {audio,video}_project.{linear1,linear2,layer_norm}.* -> {audio,video}_proj.{linear1,linear2,norm}.*
    a2v_head.*, v2a_head.*         -> a2v_head.*, v2a_head.*
    cls_head.*                     -> classifier.*
    temp                           -> tau

Class order: the original's logits are (hap, neu, sad, ang). The imported model KEEPS that order
(``config.labels = ["hap", "neu", "sad", "ang"]``), so its logits equal the original's column by
column; consumers map names through ``model.labels``. Widths, layer count and the number of
classes are read from the tensors; the number of heads is not stored (the original used 4).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from foalnet.model.audio import AUDIO_ENCODERS, build_audio_encoder, configure_audio_encoder, hf_encoder_from_config
from foalnet.model.foalnet import FoalNet, FoalNetConfig
from foalnet.errors import UsageError

REFERENCE_LABELS = ["hap", "neu", "sad", "ang"]

_PREFIXES = (  # original prefix -> foalnet prefix (first match wins)
    ("wavlm.", "audio_encoder.model."),
    ("a2v_head.", "a2v_head."),
    ("v2a_head.", "v2a_head."),
    ("a2v.", "a2v.layers."),
    ("v2a.", "v2a.layers."),
    ("audio_project.", "audio_proj."),
    ("video_project.", "video_proj."),
    ("cls_head.", "classifier."),
)
_LEAVES = {"w_q": "q_proj", "w_k": "k_proj", "w_v": "v_proj", "w_concat": "out_proj", "ln": "norm",
           "layer_norm": "norm"}
_WEIGHT_NORM_OLD_TO_NEW = {"weight_g": "parametrizations.weight.original0",
                           "weight_v": "parametrizations.weight.original1"}


def load_reference_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load a checkpoint (tensors only) and unwrap {"state_dict": ...} / DDP "module." prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such state dict")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises pickle/Key/EOF/Runtime errors on junk: name the file
        raise UsageError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or "cls_head.weight" not in {k.removeprefix("module.") for k in state}:
        raise UsageError(f"{path}: not a Foal-Net MultiTaskModel state dict (no cls_head.weight)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_reference_key(key: str, new_weight_norm: bool) -> str | None:
    """One original key -> foalnet key (None if it belongs to no known module)."""
    if key == "temp":
        return "tau"
    for old, new in _PREFIXES:
        if key.startswith(old):
            rest = key[len(old):]
            if new.startswith("audio_encoder."):
                return new + _weight_norm_name(rest, new_weight_norm)
            parts = [_LEAVES.get(part, part) for part in rest.split(".")]
            return new + ".".join(parts)
    return None


def _weight_norm_name(key: str, new: bool) -> str:
    """Rename weight-norm tensors to the naming the target module uses."""
    for old_leaf, new_leaf in _WEIGHT_NORM_OLD_TO_NEW.items():
        if new and key.endswith("." + old_leaf):
            return key[: -len(old_leaf)] + new_leaf
        if not new and key.endswith("." + new_leaf):
            return key[: -len(new_leaf)] + old_leaf
    return key


def convert_reference_state_dict(
    state: dict[str, torch.Tensor], target_keys: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """-> (foalnet state dict, original keys that map to nothing)."""
    new_weight_norm = any("parametrizations.weight.original" in k for k in target_keys)
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        new_key = map_reference_key(key, new_weight_norm)
        if new_key is None:
            unmapped.append(key)
        else:
            mapped[new_key] = value
    return mapped, unmapped


def reference_config(state: dict[str, torch.Tensor], audio_encoder: str, *, fusion_heads: int = 4,
                     labels: list[str] | None = None, **overrides: Any) -> FoalNetConfig:
    """A full Foal-Net config whose shapes match the original's tensors."""
    num_classes = state["cls_head.weight"].shape[0]
    labels = list(labels) if labels else REFERENCE_LABELS
    if len(labels) != num_classes:
        raise UsageError(f"cls_head has {num_classes} classes but labels are {labels}")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"a2v\.(\d+)\.", k))}
    return FoalNetConfig(
        labels=labels, modality="av", use_avel=True, use_mem=True, audio_encoder=audio_encoder,
        video_dim=int(state["v2a.0.w_q.weight"].shape[0]),
        proj_dim=int(state["audio_project.linear1.weight"].shape[0]),
        fusion_layers=len(layers), fusion_heads=fusion_heads, tau_init=float(state["temp"]), **overrides)


def import_reference(state_dict_path: str | Path, audio_encoder: str, out_dir: str | Path, *,
                     fusion_heads: int = 4, labels: list[str] | None = None, **overrides: Any) -> FoalNet:
    """Build a FoalNet from the original's weights and save it to ``out_dir``.

    ``audio_encoder``: the WavLM (wav2vec2-family) checkpoint the original was built from, hub id
    or folder; only its config is read. Raises ValueError if any key is missing or left over.
    """
    state = load_reference_state_dict(state_dict_path)
    config = reference_config(state, audio_encoder, fusion_heads=fusion_heads, labels=labels, **overrides)
    if audio_encoder in AUDIO_ENCODERS:
        encoder = build_audio_encoder(audio_encoder, config.audio_options)
    else:  # only the config: the weights come from the state dict
        encoder = configure_audio_encoder(hf_encoder_from_config(audio_encoder, config.audio_options),
                                          config.freeze_feature_encoder)
    model = FoalNet(config, audio_encoder=encoder)
    mapped, unmapped = convert_reference_state_dict(state, set(model.state_dict()))
    try:
        result = model.load_state_dict(mapped, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise UsageError(f"{state_dict_path}: does not fit audio encoder {audio_encoder!r}: {err}") from err
    problems = []
    if unmapped or result.unexpected_keys:
        problems.append(f"unexpected keys {sorted(unmapped + list(result.unexpected_keys))[:10]}")
    if result.missing_keys:
        problems.append(f"missing keys {sorted(result.missing_keys)[:10]}")
    if problems:
        raise UsageError(f"{state_dict_path}: does not match audio encoder {audio_encoder!r}: " + "; ".join(problems))
    model.save_pretrained(out_dir)
    return model
