"""Audio encoders: one interface, a name registry, and the transformers wav2vec2-family wrapper.

Every audio encoder is an ``nn.Module`` with an int attribute ``hidden_size`` and
``forward(waveform [B,S] float, waveform_mask [B,S] bool) -> (hidden [B,L,H], frame_mask [B,L] bool)``.

Names in ``AUDIO_ENCODERS`` map to a lazy ``"module:attr"`` target (a class or a builder called with
``**options``), so adding an offline encoder is one new file plus one line here. Any other name is
a transformers wav2vec2-family checkpoint (WavLM, wav2vec2, HuBERT): a hub id or a local folder.

Cacheable front end (optional, both built-in kinds have it): ``frontend(waveform, mask) ->
(features [B,T,C], feature_mask [B,T])`` is the encoder's fixed, deterministic first part (the
frozen CNN of a wav2vec2-family model, the DSP features of the offline encoder); valid frames
never depend on padding, so it can be computed once per utterance and cached
(``foalnet.features.audio_cache``). ``encode_frontend(features, feature_mask)`` is the trainable
rest, and ``encode_frontend(*frontend(w, m))`` equals ``forward(w, m)`` on valid frames.
``frontend_fingerprint()`` returns a JSON dict that changes whenever the front end's output would
(the cache key), or None when the front end is not fixed (e.g. an unfrozen CNN).

Saved form (``audio_encoder/config.json`` of a model folder): the transformers config for
transformers encoders (rebuilt with ``from_config``, no download), else
``{"registry_name", "options", "hidden_size"}``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from foalnet.data.files import write_text_atomic
from foalnet.model.wavlm_packed import packed_encoder_forward, supports_packed
from foalnet.errors import UsageError

# name -> "module:attr"; attr is a class or a builder taking **options and returning an encoder.
AUDIO_ENCODERS: dict[str, str] = {
    "offline": "foalnet.model.audio_offline:OfflineAudioEncoder",
    "tiny-wavlm": "foalnet.model.audio:build_tiny_wavlm",
}

AUDIO_CONFIG_NAME = "config.json"

# Small WavLM (about 0.2 M parameters, 20 ms frames like WavLM) that builds with no download.
TINY_WAVLM_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [32, 32, 32, 32],
    "conv_stride": [5, 4, 4, 4],
    "conv_kernel": [10, 8, 4, 4],
    "feat_extract_norm": "layer",  # per-frame LayerNorm keeps valid frames independent of padding
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "num_buckets": 32,
    "max_bucket_distance": 128,
}


def register_audio_encoder(name: str, target: str | Callable[..., nn.Module]) -> None:
    """Add (or replace) a registry entry: ``"module:attr"`` or a callable taking ``**options``."""
    AUDIO_ENCODERS[name] = target  # type: ignore[assignment]


def _resolve(target: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


class HFAudioEncoder(nn.Module):
    """A transformers wav2vec2-family model behind the audio-encoder interface.

    The frame mask is derived from the waveform mask with the model's own
    ``_get_feat_extract_output_lengths`` (as transformers does), except that an input too short
    for one frame (including length 0) gets an all-False mask: transformers' index trick marks
    frames valid in that case (spec §3). Such rows are fed to the encoder as a full-length zero
    signal so that nothing inside it sees an empty attention row; their outputs are masked out.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for attr in ("feature_extractor", "_get_feat_extract_output_lengths", "config"):
            if not hasattr(model, attr):
                raise UsageError(
                    f"audio encoder {type(model).__name__} is not a wav2vec2-family model (no {attr})"
                )
        self.model = model
        self.hidden_size = int(model.config.hidden_size)
        # SpecAugment (training) needs at least mask_time_length frames in the padded batch
        self.min_frames = max(1, int(getattr(model.config, "mask_time_length", 1) or 1))
        self.min_samples = samples_for_frames(self.min_frames, model.config.conv_kernel, model.config.conv_stride)
        self.packed = supports_packed(model)  # WavLM: transformer layers on valid frames only
        self.recompute_attention = True  # packed path, training on CPU (wavlm_packed.attention)

    def use_packed_encoder(self, enabled: bool, recompute_attention: bool = True) -> None:
        """Run WavLM's transformer layers on valid frames only (``wavlm_packed``; same function).
        Other model types always use their own encoder. ``recompute_attention``: in training on
        CPU, recompute the attention probabilities in the backward pass instead of keeping them
        (``wavlm_packed.attention``; same function, less memory)."""
        self.packed = bool(enabled) and supports_packed(self.model)
        self.recompute_attention = bool(recompute_attention)

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN feature encoder. With frozen weights and an input that needs no grad,
        transformers' CNN builds no autograd graph (the same as running it under no_grad)."""
        self.model.freeze_feature_encoder()

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing of the transformer layers (WavLM-Large at batch 16 on 24 GB)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def frame_mask(self, waveform_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """[B,S] bool -> [B,L] bool: frame j is valid iff j < output_length(valid samples)."""
        lengths = waveform_mask.sum(-1)
        out_lengths = self.model._get_feat_extract_output_lengths(lengths).clamp(min=0)  # (B,)
        frames = torch.arange(num_frames, device=waveform_mask.device)
        return frames[None, :] < out_lengths[:, None]

    def forward(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform [B,S] float (padding zeroed), waveform_mask [B,S] bool -> ([B,L,H], [B,L]).

        A fixed front end (frozen LayerNorm CNN) runs per utterance on its valid samples only
        (``frontend``), then the rest of the model on the padded features: the same output as
        the model's own forward on the padded batch, with a fraction of the CNN's time and
        memory. Otherwise the model's own forward runs on the padded batch."""
        if self.frontend_is_fixed():
            return self.encode_frontend(*self.frontend(waveform, waveform_mask))
        B, S = waveform.shape
        if S < self.min_samples:  # too short for the CNN (or SpecAugment): pad, the mask says what is valid
            pad = self.min_samples - S
            waveform = nn.functional.pad(waveform, (0, pad))
            waveform_mask = nn.functional.pad(waveform_mask, (0, pad), value=False)
        lengths = self.model._get_feat_extract_output_lengths(waveform_mask.sum(-1))
        empty = lengths <= 0  # (B,) rows with no valid frame
        encoder_mask = waveform_mask | empty[:, None]
        hidden = self.model(waveform, attention_mask=encoder_mask.long()).last_hidden_state  # (B, L, H)
        return hidden, self.frame_mask(waveform_mask, hidden.shape[1])

    # ---- cacheable front end (see the module docstring)
    def frontend_is_fixed(self) -> bool:
        """A frozen CNN with per-frame LayerNorm and no adapter: its valid frames are a fixed
        function of the valid samples. Not so when the CNN trains, or normalises over time
        (GroupNorm: valid frames would depend on the padding)."""
        cfg = self.model.config
        return (not getattr(self.model.feature_extractor, "_requires_grad", True)
                and cfg.feat_extract_norm == "layer" and getattr(self.model, "adapter", None) is None)

    def frontend_fingerprint(self) -> dict[str, Any] | None:
        """CNN config + a hash of its weights; None unless ``frontend_is_fixed``."""
        cfg = self.model.config
        if not self.frontend_is_fixed():
            return None
        digest = hashlib.sha1()
        for name, tensor in sorted(self.model.feature_extractor.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        fields = ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm",
                  "feat_extract_activation")
        return {"kind": f"{cfg.model_type}-cnn", **{f: getattr(cfg, f) for f in fields},
                "weights_sha1": digest.hexdigest()}

    def frontend(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform [B,S] (valid samples first) -> frozen CNN features [B,T,C] and mask [B,T].

        T is what the padded batch would give; each utterance runs alone on its valid samples,
        which yields exactly the padded batch's valid frames (no conv window of a valid frame
        reaches into padding, LayerNorm is per frame) without computing the padding."""
        if not self.frontend_is_fixed():
            raise ValueError("the CNN front end is not fixed (it trains, or normalises over time)")
        B, S = waveform.shape
        num_frames = int(self.model._get_feat_extract_output_lengths(torch.tensor(max(S, self.min_samples))))
        frame_mask = self.frame_mask(waveform_mask, num_frames)  # (B, T)
        features = waveform.new_zeros(B, num_frames, int(self.model.config.conv_dim[-1]))
        with torch.no_grad():
            for row, (samples, frames) in enumerate(zip(waveform_mask.sum(-1).tolist(), frame_mask.sum(-1).tolist())):
                if frames > 0:
                    item = self.model.feature_extractor(waveform[row : row + 1, :samples])  # (1, C, frames)
                    features[row, :frames] = item[0].transpose(0, 1)
        return features, frame_mask

    def encode_frontend(self, features: torch.Tensor, feature_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN features [B,T,C], mask [B,T] -> ([B,T,H], [B,T]): projection, SpecAugment, encoder.

        The same steps as the model's own forward after its CNN; rows with no valid frame run as
        all-valid zero features (nothing sees an empty attention row) and come back all-masked."""
        feature_mask = feature_mask.bool()
        T = features.shape[1]
        if T < self.min_frames:  # SpecAugment needs mask_time_length frames in the batch
            features = nn.functional.pad(features, (0, 0, 0, self.min_frames - T))
            feature_mask = nn.functional.pad(feature_mask, (0, self.min_frames - T), value=False)
        empty = ~feature_mask.any(-1)
        encoder_mask = feature_mask | empty[:, None]  # bool: the encoder inverts it with ~
        projected = self.model.feature_projection(features.to(self.model.feature_projection.projection.weight.dtype))
        hidden = projected[0] if isinstance(projected, tuple) else projected  # HuBERT returns one tensor
        hidden = self.model._mask_hidden_states(hidden, attention_mask=encoder_mask)
        if self.packed:
            # CUDA's memory-efficient SDPA kernel keeps no probabilities: nothing to recompute there
            recompute = self.recompute_attention and hidden.device.type == "cpu"
            hidden = packed_encoder_forward(self.model.encoder, hidden, encoder_mask, recompute_attention=recompute)
        else:
            hidden = self.model.encoder(hidden, attention_mask=encoder_mask)[0]
        return hidden, feature_mask


def samples_for_frames(frames: int, kernels: list[int] | tuple[int, ...], strides: list[int] | tuple[int, ...]) -> int:
    """Fewest input samples giving ``frames`` output frames of a stack of 1-D convolutions."""
    size = frames
    for kernel, stride in reversed(list(zip(kernels, strides))):
        size = (size - 1) * stride + kernel
    return size


def build_tiny_wavlm(**options: Any) -> HFAudioEncoder:
    """A randomly initialised small WavLM (``TINY_WAVLM_DEFAULTS`` updated by ``options``)."""
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(**{**TINY_WAVLM_DEFAULTS, **options})
    return HFAudioEncoder(WavLMModel(config))


def _hf_encoder_from_pretrained(name_or_path: str, options: dict[str, Any]) -> HFAudioEncoder:
    """Pretrained weights from a hub id or local folder; ``options`` override config fields."""
    from transformers import AutoModel

    return HFAudioEncoder(AutoModel.from_pretrained(name_or_path, **options))


def hf_encoder_from_config(name_or_path: str, options: dict[str, Any] | None = None) -> HFAudioEncoder:
    """Random-weight encoder from a checkpoint's config only (weights are loaded afterwards)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(name_or_path, **dict(options or {}))
    return HFAudioEncoder(AutoModel.from_config(config))


def build_audio_encoder(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    freeze_feature_encoder: bool = True,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Registry name -> that encoder; anything else -> pretrained transformers checkpoint."""
    options = dict(options or {})
    if name in AUDIO_ENCODERS:
        encoder = _resolve(AUDIO_ENCODERS[name])(**options)
    else:
        encoder = _hf_encoder_from_pretrained(name, options)
    return configure_audio_encoder(encoder, freeze_feature_encoder, gradient_checkpointing)


def configure_audio_encoder(encoder: nn.Module, freeze: bool = True, checkpointing: bool = False) -> nn.Module:
    """Check the interface; freeze the CNN / enable checkpointing of a transformers encoder."""
    if not isinstance(getattr(encoder, "hidden_size", None), int):
        raise UsageError(f"audio encoder {type(encoder).__name__} has no int attribute hidden_size")
    if isinstance(encoder, HFAudioEncoder):
        if freeze:
            encoder.freeze_feature_encoder()
        if checkpointing:
            encoder.gradient_checkpointing_enable()
    return encoder


def audio_encoder_config(encoder: nn.Module, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The JSON saved as ``audio_encoder/config.json`` (enough to rebuild without download)."""
    if isinstance(encoder, HFAudioEncoder):
        return encoder.model.config.to_dict()
    return {"registry_name": name, "options": options, "hidden_size": encoder.hidden_size}


def save_audio_encoder_config(encoder: nn.Module, name: str, options: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / AUDIO_CONFIG_NAME, audio_encoder_config(encoder, name, options))


def load_audio_encoder(
    folder: str | Path, *, freeze_feature_encoder: bool = True, gradient_checkpointing: bool = False
) -> nn.Module:
    """Rebuild an encoder (random weights) from ``folder/config.json``; never downloads."""
    path = Path(folder) / AUDIO_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing audio encoder config")
    saved = json.loads(path.read_text())
    if "registry_name" in saved:
        name = saved["registry_name"]
        if name not in AUDIO_ENCODERS:
            raise UsageError(f"{path}: unknown audio encoder {name!r}; known: {sorted(AUDIO_ENCODERS)}")
        encoder = _resolve(AUDIO_ENCODERS[name])(**saved.get("options", {}))
    elif "model_type" in saved:
        encoder = hf_encoder_from_config(str(Path(folder)))  # a local folder: no download
    else:
        raise UsageError(f"{path}: neither a transformers config nor a registry entry")
    return configure_audio_encoder(encoder, freeze_feature_encoder, gradient_checkpointing)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file + os.replace, so a crash never leaves half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
