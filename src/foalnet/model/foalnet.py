"""Foal-Net (spec §1): audio encoder + cached video embeddings, AVEL alignment, a2v / v2a
cross-attention fusion, MEM label matching with hard negatives, linear classifier.

Read top to bottom: config -> blocks -> encoders -> fusion -> heads -> the model -> save/load.

Calling convention::

    out = model(waveform=[B,S] float, waveform_mask=[B,S] bool, video=[B,T,D] float,
                video_mask=[B,T] bool, labels=[B] long | None)
    out.logits [B,C]; with labels out.loss = ce*CE + avel*AVEL + mem*MEM, out.losses = {...}

CE and AVEL are computed whenever labels are given (AVEL only if enabled); MEM in train mode when
enabled, in eval mode only with ``compute_mem=True``. The fusion runs ONCE per step: with MEM its
positive halves are the classification features.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foalnet.model.audio import (
    build_audio_encoder,
    load_audio_encoder,
    save_audio_encoder_config,
    write_json_atomic,
)
from foalnet.model.distributed import gather_batch
from foalnet.model.dropout import Dropout
from foalnet.model.losses import avel_loss, draw_negatives, hard_negative_probs, masked_mean, mem_loss
from foalnet.model.packing import Grouping, Packing, length_groups
from foalnet.errors import UsageError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
AUDIO_ENCODER_DIR = "audio_encoder"
MODALITIES = ("av", "audio", "video")


# ----------------------------------------------------------------------------------------- config
@dataclass
class FoalNetConfig:
    """Everything needed to rebuild a FoalNet (saved resolved as config.json)."""

    labels: list[str] = field(default_factory=lambda: ["neu", "hap", "sad", "ang"])  # logit order
    modality: str = "av"  # "av" (Foal-Net), "audio" or "video" (single-modality ablations)
    use_avel: bool = True  # audio-video emotion alignment loss (spec §1.4)
    use_mem: bool = True  # cross-modal emotion label matching with hard negatives (spec §1.6)
    ce_weight: float = 1.0  # weight of the classification cross-entropy
    avel_weight: float = 1.0  # weight of L_avel
    mem_weight: float = 0.1  # weight of L_mem
    audio_encoder: str = "microsoft/wavlm-large"  # registry name ("offline", "tiny-wavlm"), hub id or folder
    audio_options: dict[str, Any] = field(default_factory=dict)  # registry options / HF config overrides
    freeze_feature_encoder: bool = True  # CNN feature encoder frozen (spec §1.1)
    audio_gradient_checkpointing: bool = False  # activation checkpointing inside a transformers encoder
    audio_packed_encoder: bool = True  # WavLM layers on valid frames only (same function, less work)
    # packed WavLM training on CPU: attention probabilities recomputed in the backward pass, not
    # kept (same function; wavlm_packed.attention)
    audio_attention_recompute: bool = True
    sample_rate: int = 16000  # Hz expected by the audio encoder
    max_audio_seconds: float = 6.0  # the data crops waveforms to this (96,000 samples at 16 kHz)
    normalize_audio: bool = False  # zero-mean unit-variance per utterance (off in the original)
    video_dim: int = 768  # per-frame embedding size of the visual encoder (CLIP ViT-L/14: 768)
    max_video_frames: int = 180  # the data keeps the first frames only
    visual_encoder: str = "openai/clip-vit-large-patch14"  # name used by extract-visual
    visual_settings: dict[str, Any] = field(default_factory=dict)  # crop, fps policy, ... of extract-visual
    proj_dim: int = 512  # AVEL projection width
    proj_dropout: float = 0.5  # dropout inside the AVEL projection block
    fusion_layers: int = 2  # cross-attention layers per direction
    fusion_heads: int = 4  # attention heads (must divide both modality widths)
    fusion_dropout: float = 0.1  # dropout after each cross-attention output map
    feature_dropout: float = 0.0  # dropout on encoder outputs and classifier input (original: final_dropout)
    tau_init: float = math.log(1 / 0.07)  # initial AVEL temperature (a divisor, spec §1.4)
    learn_tau: bool = True  # train the temperature
    init_std: float = 0.02  # std of the normal init of new Linear layers

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise UsageError("invalid FoalNetConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        p: list[str] = []
        if not self.labels or len(set(self.labels)) != len(self.labels):
            p.append(f"labels must be non-empty and unique, got {self.labels!r}")
        if self.modality not in MODALITIES:
            p.append(f"modality={self.modality!r} not in {MODALITIES}")
        elif self.modality != "av" and (self.use_avel or self.use_mem):
            p.append(f"use_avel={self.use_avel}/use_mem={self.use_mem} need modality='av', got {self.modality!r}")
        for name in ("ce_weight", "avel_weight", "mem_weight", "max_audio_seconds"):
            if getattr(self, name) < 0:
                p.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("sample_rate", "video_dim", "max_video_frames", "proj_dim", "fusion_layers", "fusion_heads"):
            if int(getattr(self, name)) < 1:
                p.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("proj_dropout", "fusion_dropout", "feature_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                p.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.tau_init <= 0 or self.init_std <= 0:
            p.append(f"tau_init={self.tau_init} and init_std={self.init_std} must be > 0")
        if self.modality == "av" and self.fusion_heads >= 1 and self.video_dim % self.fusion_heads:
            p.append(f"fusion_heads={self.fusion_heads} does not divide video_dim={self.video_dim}")
        for name in ("audio_options", "visual_settings"):
            try:
                json.dumps(getattr(self, name))
            except TypeError as err:
                p.append(f"{name} is not JSON-serialisable ({err})")
        return p

    @classmethod
    def paper(cls, **overrides: Any) -> "FoalNetConfig":
        """spec §1: WavLM-Large, CLIP ViT-L/14 projected image embeddings (768), full Foal-Net."""
        base = dict(audio_encoder="microsoft/wavlm-large", visual_encoder="openai/clip-vit-large-patch14",
                    video_dim=768)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "FoalNetConfig":
        """Offline on a 2-core CPU: the offline audio front end, the tiny visual encoder (128-d)."""
        # attention_heads=4: one self-attention block in the offline encoder; on real speech
        # (real-speech-dev, 6 speaker folds) UA 0.640 vs 0.619 (5 seeds, benchmarks/real_speech_dev.py)
        # and 0.604 vs 0.510 through `foalnet cv --modality audio` (README, 1 seed).
        # egemaps + compare + speaker_norm (openSMILE's eGeMAPS and ComParE LLD frames, z-scored
        # per speaker) instead of the log-mel + prosody frames: chosen on real speech,
        # docs/benchmarks.md (ComParE added in its sixth round: 0.740 vs 0.707 over 3 seeds).
        audio = {"attention_heads": 4, "egemaps": True, "compare": True, "use_mel": False,
                 "use_prosody": False, "speaker_norm": True}
        base = dict(audio_encoder="offline", audio_options=audio, visual_encoder="tiny",
                    video_dim=128, proj_dim=64)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FoalNetConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "foalnet_version"})
        if unknown:
            raise UsageError(f"unknown FoalNetConfig fields: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class FoalNetOutput:
    """What forward returns. Parts that were not computed are None / absent from ``losses``."""

    loss: torch.Tensor | None  # weighted training loss (labels given)
    losses: dict[str, torch.Tensor]  # scalar parts: "ce", "avel" (if enabled), "mem" (if computed)
    logits: torch.Tensor  # [B, C] in the order of model.labels
    audio_embeds: torch.Tensor | None  # [B, H_a] pooled (fused) audio features fed to the classifier
    video_embeds: torch.Tensor | None  # [B, D_v] pooled (fused) video features fed to the classifier
    audio_align: torch.Tensor | None = None  # [B, P] L2-normalised AVEL audio projection
    video_align: torch.Tensor | None = None  # [B, P] L2-normalised AVEL video projection


ATTENTION_GROUPS = 4  # length groups of the query rows per fusion attention (packing.length_groups)


# ----------------------------------------------------------------------------------------- blocks
class ProjectionBlock(nn.Module):
    """AVEL projection: e1 = W1 x; e2 = Dropout(W2 GELU(e1)); LayerNorm(e1 + e2) (no biases)."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] -> [B, d_out] (not yet L2-normalised)."""
        e1 = self.linear1(x)
        e2 = self.dropout(self.linear2(F.gelu(e1)))
        return self.norm(e1 + e2)


class CrossAttentionLayer(nn.Module):
    """Queries of one modality attend to the other: multi-head attention with a key-padding mask,
    output map, dropout, post-LN residual LayerNorm(out + query). No FFN, no positions.

    Queries arrive packed (valid frames only, ``Packing``): the projections, dropout and
    LayerNorm run on valid frames; attention unpacks them. Padded query frames never reached the
    output (the stack pools valid frames), so this is the padded layer's function. The context
    arrives packed too: keys and values are projected on its valid frames and unpacked with zeros
    at the masked positions (a third of the projection work on IEMOCAP-like batches was padding).
    torch's ``scaled_dot_product_attention`` with a boolean mask: masked scores get -inf where the
    original wrote -10000 (identical after softmax in float32, and no overflow in float16). A row
    with no valid key has no attention to define: its attention output is zero (the residual and
    out_proj bias remain).

    Attention runs per length group of the query rows (``packing.length_groups``, computed once
    by the stack): each group's queries are padded to its own longest row, not the batch's, so
    torch's CPU SDPA kernel computes and keeps fewer padded rows (same outputs and gradients).
    """

    def __init__(self, query_dim: int, key_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if query_dim % num_heads:
            raise UsageError(f"fusion_heads={num_heads} does not divide the query width {query_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(query_dim, query_dim)
        self.k_proj = nn.Linear(key_dim, query_dim)
        self.v_proj = nn.Linear(key_dim, query_dim)
        self.out_proj = nn.Linear(query_dim, query_dim)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(query_dim)

    def forward(self, query: torch.Tensor, packing: Packing, context: torch.Tensor, context_packing: Packing,
                keys: torch.Tensor, no_key: torch.Tensor | None, grouping: Grouping,
                context_index: torch.Tensor | None = None, query_repeat: int = 1) -> tuple[torch.Tensor, Packing]:
        """query [N,D] packed by ``packing`` (B rows), context [Nc,Dk]: the valid frames of the
        [M,Lk] context rows packed by ``context_packing`` -> (packed output of the B*query_repeat
        rows, their packing). ``keys`` [R*B,1,1,Lk] and ``no_key`` come from
        ``CrossAttentionStack.key_mask``, ``grouping`` from ``length_groups`` of the repeated rows
        (the same for every layer of a stack).

        Query row r (of the batch repeated ``query_repeat`` times) attends to context row
        ``context_index[r]`` (default r). Projecting the pool once and indexing the projections
        is the same function as projecting the indexed rows, at half the cost for MEM's [V; V_neg].
        """
        D, H = query.shape[-1], self.num_heads
        q = self.q_proj(query)  # (N, D)
        if query_repeat > 1:
            query, packing = query.repeat(query_repeat, 1), packing.repeat(query_repeat)
        # keys and values projected on the valid context frames only (the padded ones are masked out)
        k, v = (context_packing.unpack(proj(context)) for proj in (self.k_proj, self.v_proj))  # (M, Lk, D)
        Lk = k.shape[1]
        # the groups' query frames moved once (packing.Grouping), and their context rows gathered
        # once: whole rows of the projections, before the heads' transpose (a gather per group
        # would each scatter into zeros in the backward pass)
        groups = grouping.groups
        queries = grouping.to_group_order(q if query_repeat == 1 else q.repeat(query_repeat, 1)).split(grouping.sizes)
        items = torch.cat([group.items for group in groups])  # query rows in group order
        rows = items if context_index is None else context_index.index_select(0, items)
        batch_sizes = [group.packing.batch for group in groups]
        contexts = zip(k.index_select(0, rows).split(batch_sizes), v.index_select(0, rows).split(batch_sizes),
                       keys.index_select(0, items).split(batch_sizes))
        outputs = []
        for group, qg, (kg, vg, key_mask) in zip(groups, queries, contexts):
            b, T = group.packing.batch, group.packing.length
            qg = group.packing.unpack(qg).view(b, T, H, D // H).transpose(1, 2)  # (b, H, T, D/H)
            kg = kg.view(b, Lk, H, D // H).transpose(1, 2)  # (b, H, Lk, D/H)
            vg = vg.view(b, Lk, H, D // H).transpose(1, 2)
            out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=key_mask)
            if no_key is not None:  # rare (a video with no frame)
                out = out.masked_fill(no_key.index_select(0, group.items)[:, None, None, None], 0.0)
            outputs.append(group.packing.pack(out.transpose(1, 2).reshape(b, T, D)))
        out = grouping.to_packed(outputs)  # (N', D)
        out = self.dropout(self.out_proj(out))
        return self.norm(out + query), packing


class CrossAttentionStack(nn.Module):
    """N cross-attention layers; every layer attends to the ORIGINAL other-modality sequence."""

    def __init__(self, query_dim: int, key_dim: int, num_layers: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttentionLayer(query_dim, key_dim, num_heads, dropout) for _ in range(num_layers)
        )

    def forward(self, query: torch.Tensor, query_mask: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, context_index: torch.Tensor | None = None,
                query_repeat: int = 1) -> torch.Tensor:
        """query [B,Lq,D] -> mean over the valid query frames, [B*query_repeat, D] (see
        CrossAttentionLayer); the layers run on the valid query frames only."""
        packing, context_packing = Packing(query_mask), Packing(context_mask)
        x, context_frames = packing.pack(query), context_packing.pack(context)
        keys, no_key = self.key_mask(context_mask, context_index)
        grouping = length_groups(query_mask.repeat(query_repeat, 1), ATTENTION_GROUPS)
        for i, layer in enumerate(self.layers):
            x, packing = layer(x, packing, context_frames, context_packing, keys, no_key, grouping, context_index,
                               query_repeat if i == 0 else 1)
        return packing.mean(x)

    @staticmethod
    def key_mask(context_mask: torch.Tensor, context_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each query row's key-padding mask [B,1,1,Lk] (a row with no valid key attends to all,
        its output is zeroed) and those rows ([B] bool, or None when there are none)."""
        if context_index is not None:
            context_mask = context_mask.index_select(0, context_index)
        has_key = context_mask.any(dim=1)  # (B,)
        keys = (context_mask | ~has_key[:, None])[:, None, None, :]  # no all-False row
        return keys, (None if bool(has_key.all()) else ~has_key)


# ---------------------------------------------------------------------------------------- helpers
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows [B, P] in float32; a zero row stays zero with a bounded gradient.
    F.normalize's eps (1e-12) is 0 in float16, and its gradient at a zero row is 1/eps."""
    x = x.float()
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, 1.0)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the positions outside the mask (x [B,T] or [B,T,D], mask [B,T] bool), not in place.
    masked_fill, not a product: garbage (even inf/NaN) in the padding must not leak."""
    m = mask if x.dim() == mask.dim() else mask.unsqueeze(-1)
    return x.masked_fill(~m, 0.0)


def pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero/False-pad dim 1 of [B,T,...] up to ``length``."""
    extra = length - x.shape[1]
    if extra <= 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, extra]
    return F.pad(x, pad)


def normalize_waveform(waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the valid samples of each row (as Wav2Vec2FeatureExtractor)."""
    m = mask.to(waveform.dtype)
    count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (waveform * m).sum(dim=1, keepdim=True) / count
    var = (((waveform - mean) * m) ** 2).sum(dim=1, keepdim=True) / count
    return (waveform - mean) / torch.sqrt(var + 1e-7) * m


def init_new_layer(module: nn.Module, std: float) -> None:
    """wav2vec2-family _init_weights for new layers: Linear ~ N(0, std), bias 0; LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------------ model
class FoalNet(nn.Module):
    """Foal-Net. Only the modules the configured ablation uses are created (DDP-friendly)."""

    def __init__(self, config: FoalNetConfig, audio_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.uses_audio = c.modality in ("av", "audio")
        self.uses_video = c.modality in ("av", "video")
        # encoders
        if self.uses_audio:
            self.audio_encoder = audio_encoder if audio_encoder is not None else build_audio_encoder(
                c.audio_encoder, c.audio_options, freeze_feature_encoder=c.freeze_feature_encoder,
                gradient_checkpointing=c.audio_gradient_checkpointing)
            if hasattr(self.audio_encoder, "use_packed_encoder"):
                self.audio_encoder.use_packed_encoder(c.audio_packed_encoder, c.audio_attention_recompute)
            audio_dim = int(self.audio_encoder.hidden_size)
            resolved_options = getattr(self.audio_encoder, "to_dict", None)
            if callable(resolved_options):
                # Record every option, defaults included, so a saved model does not change
                # when an offline encoder's defaults do.
                self.config = config = c = dataclasses.replace(c, audio_options=resolved_options())
        else:
            audio_dim = 0
        video_dim = c.video_dim if self.uses_video else 0
        self.audio_dim, self.video_dim = audio_dim, video_dim
        self.feature_dropout = Dropout(c.feature_dropout)
        new_layers: list[nn.Module] = []
        # alignment (AVEL)
        if c.use_avel:
            self.audio_proj = ProjectionBlock(audio_dim, c.proj_dim, c.proj_dropout)
            self.video_proj = ProjectionBlock(video_dim, c.proj_dim, c.proj_dropout)
            self.tau = nn.Parameter(torch.tensor(float(c.tau_init)), requires_grad=c.learn_tau)
            new_layers += [self.audio_proj, self.video_proj]
        # fusion
        if c.modality == "av":
            self.a2v = CrossAttentionStack(audio_dim, video_dim, c.fusion_layers, c.fusion_heads, c.fusion_dropout)
            self.v2a = CrossAttentionStack(video_dim, audio_dim, c.fusion_layers, c.fusion_heads, c.fusion_dropout)
            new_layers += [self.a2v, self.v2a]
        # heads
        if c.use_mem:
            self.a2v_head = nn.Linear(audio_dim, 2)
            self.v2a_head = nn.Linear(video_dim, 2)
            new_layers += [self.a2v_head, self.v2a_head]
        self.classifier = nn.Linear(audio_dim + video_dim, len(c.labels))
        new_layers.append(self.classifier)
        for layer in new_layers:
            layer.apply(lambda m: init_new_layer(m, c.init_std))

    @property
    def labels(self) -> list[str]:
        """Class names in logit order."""
        return list(self.config.labels)

    # ---- encoders
    def _model_waveform(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padding zeroed (spec §1.3), then the optional amplitude normalisation (§1.1)."""
        waveform_mask = waveform_mask.bool()
        waveform = zero_padding(waveform, waveform_mask)
        if self.config.normalize_audio:
            waveform = normalize_waveform(waveform, waveform_mask)
        return waveform, waveform_mask

    def _finish_audio(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.feature_dropout(hidden)
        return zero_padding(hidden, frame_mask), frame_mask

    def encode_audio(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,S], [B,S] -> hidden [B,La,Ha] with padded frames zeroed, frame mask [B,La]."""
        return self._finish_audio(*self.audio_encoder(*self._model_waveform(waveform, waveform_mask)))

    def audio_frontend_fingerprint(self) -> dict | None:
        """What determines ``audio_frontend``'s output (the audio-cache key), or None when the
        audio encoder has no fixed front end (then training always runs it from the waveform)."""
        fingerprint = getattr(self.audio_encoder, "frontend_fingerprint", None) if self.uses_audio else None
        encoder_part = fingerprint() if callable(fingerprint) else None
        if encoder_part is None:
            return None
        c = self.config
        return {"encoder": encoder_part, "normalize_audio": c.normalize_audio, "sample_rate": c.sample_rate,
                "max_audio_seconds": c.max_audio_seconds}

    def audio_frontend(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,S], [B,S] -> the encoder's fixed front-end features [B,T,C] and mask [B,T] (no grad)."""
        with torch.no_grad():
            return self.audio_encoder.frontend(*self._model_waveform(waveform, waveform_mask))

    def encode_audio_features(self, features: torch.Tensor, feature_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached front-end features [B,T,C], mask [B,T] -> what ``encode_audio`` returns for the
        waveforms they were computed from."""
        return self._finish_audio(*self.audio_encoder.encode_frontend(features, feature_mask.bool()))

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,T,D], [B,T] -> video with padded frames zeroed, mask [B,T] bool."""
        B, T, D = video.shape
        if D != self.video_dim:
            raise UsageError(f"video embeddings have dim {D}, the model expects video_dim={self.video_dim}")
        video_mask = video_mask.bool()
        video = video.to(self.classifier.weight.dtype)  # cached fp16 -> model dtype
        return zero_padding(self.feature_dropout(video), video_mask), video_mask

    # ---- alignment
    def align(self, audio: torch.Tensor, audio_mask: torch.Tensor, video: torch.Tensor,
              video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked means -> projections -> L2-normalised [B,P] audio and video embeddings.

        An utterance with no frame of a modality has nothing to align: its embedding is zero and
        takes no gradient (its similarities are 0). Projected, it would be the LayerNorm bias
        alone, whose normalisation has gradients of 1/|bias| times LayerNorm's 1/sqrt(eps): NaN
        under float16 once scaled for the backward pass."""
        a = unit_rows(self.audio_proj(masked_mean(audio, audio_mask)))
        v = unit_rows(self.video_proj(masked_mean(video, video_mask)))
        return a.masked_fill(~audio_mask.any(1, keepdim=True), 0.0), v.masked_fill(~video_mask.any(1, keepdim=True), 0.0)

    # ---- fusion
    def fuse(self, audio: torch.Tensor, audio_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
             audio_pool: torch.Tensor | None = None, audio_pool_mask: torch.Tensor | None = None,
             audio_index: torch.Tensor | None = None, video_pool: torch.Tensor | None = None,
             video_pool_mask: torch.Tensor | None = None, video_index: torch.Tensor | None = None,
             repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """a2v: audio queries over video; v2a: video queries over audio -> pooled [R*B,Ha], [R*B,Dv].

        Without pools: the true pairs. With pools (MEM): query row r (queries repeated ``repeat``
        times) attends to row ``*_index[r]`` of the other modality's pool.
        """
        if video_pool is None:
            video_pool, video_pool_mask = video, video_mask
        if audio_pool is None:
            audio_pool, audio_pool_mask = audio, audio_mask
        audio_out = self.a2v(audio, audio_mask, video_pool, video_pool_mask, video_index, repeat)
        video_out = self.v2a(video, video_mask, audio_pool, audio_pool_mask, audio_index, repeat)
        return audio_out, video_out

    def _fuse_with_negatives(
        self, audio: torch.Tensor, audio_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
        labels: torch.Tensor, labels_all: torch.Tensor, sim_av: torch.Tensor | None, sim_va: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batched fusion pass: a2v on [A; A] vs [V; V_neg], v2a on [V; V] vs [A; A_neg].

        Returns (audio_out [B,Ha], video_out [B,Dv], L_mem); the positive halves are the
        classification features. Negatives come from the gathered batch.
        """
        B = audio.shape[0]
        same = labels[:, None] == labels_all[None, :]  # (B, N)
        idx_av, idx_va = draw_negatives(hard_negative_probs(sim_av, same), hard_negative_probs(sim_va, same))
        video_pool, video_index = self._negative_pool(video, gather_batch(video), idx_av)
        video_pool_mask, _ = self._negative_pool(video_mask, gather_batch(video_mask), idx_av)
        audio_pool, audio_index = self._negative_pool(audio, gather_batch(audio), idx_va)
        audio_pool_mask, _ = self._negative_pool(audio_mask, gather_batch(audio_mask), idx_va)
        audio_out, video_out = self.fuse(audio, audio_mask, video, video_mask, audio_pool, audio_pool_mask,
                                         audio_index, video_pool, video_pool_mask, video_index, repeat=2)
        loss = mem_loss(self.a2v_head(audio_out), self.v2a_head(video_out),
                        labels_all[idx_av] != labels, labels_all[idx_va] != labels)  # (2B, 2) logits each
        return audio_out[:B], video_out[:B], loss

    @staticmethod
    def _negative_pool(local: torch.Tensor, gathered: torch.Tensor,
                       neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pool, index) so that pool[index] = [local; gathered[neg]].

        One process: the pool is the local batch (projected once, indexed). Data parallel: the
        pool is [local; gathered[neg]] (projecting all ranks' items would cost more).
        """
        B = local.shape[0]
        if gathered is local:
            return local, torch.cat([torch.arange(B, device=neg.device), neg])
        length = gathered.shape[1]
        return torch.cat([pad_time(local, length), gathered[neg]]), None

    # ---- forward
    def forward(
        self,
        waveform: torch.Tensor | None = None,
        waveform_mask: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        compute_mem: bool | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
    ) -> FoalNetOutput:
        """waveform [B,S] float, waveform_mask [B,S] bool, video [B,T,D] float, video_mask [B,T] bool,
        labels [B] long (indices into model.labels) or None. ``compute_mem`` defaults to
        ``self.training``. Inputs of a modality the model does not use may be None.
        ``audio_features`` [B,T,C] / ``audio_features_mask`` [B,T]: cached ``audio_frontend``
        output, used instead of the waveform (the same function, without recomputing it)."""
        audio = audio_mask = vid = vid_mask = None
        if self.uses_audio and audio_features is not None:
            _require(audio_features, "audio_features", audio_features_mask, "audio_features_mask")
            audio, audio_mask = self.encode_audio_features(audio_features, audio_features_mask)
        elif self.uses_audio:
            _require(waveform, "waveform", waveform_mask, "waveform_mask")
            audio, audio_mask = self.encode_audio(waveform, waveform_mask)
        if self.uses_video:
            _require(video, "video", video_mask, "video_mask")
            vid, vid_mask = self.encode_video(video, video_mask)
        if self.config.modality == "audio":
            return self._single(masked_mean(audio, audio_mask), None, labels)
        if self.config.modality == "video":
            return self._single(None, masked_mean(vid, vid_mask), labels)
        return self._forward_av(audio, audio_mask, vid, vid_mask, labels, compute_mem)

    def _forward_av(self, audio: torch.Tensor, audio_mask: torch.Tensor, video: torch.Tensor,
                    video_mask: torch.Tensor, labels: torch.Tensor | None,
                    compute_mem: bool | None) -> FoalNetOutput:
        c = self.config
        losses: dict[str, torch.Tensor] = {}
        a_align = v_align = sim_av = sim_va = None
        want_mem = c.use_mem and labels is not None and (self.training if compute_mem is None else compute_mem)
        needs_pool = labels is not None and (c.use_avel or want_mem)
        labels_all = gather_batch(labels) if needs_pool else None  # (N,) all ranks' labels
        if c.use_avel:
            a_align, v_align = self.align(audio, audio_mask, video, video_mask)
            if labels is not None:
                losses["avel"], sim_av, sim_va = avel_loss(
                    a_align, v_align, gather_batch(a_align), gather_batch(v_align), labels, labels_all, self.tau)
        if want_mem:
            audio_out, video_out, losses["mem"] = self._fuse_with_negatives(
                audio, audio_mask, video, video_mask, labels, labels_all, sim_av, sim_va)
        else:
            audio_out, video_out = self.fuse(audio, audio_mask, video, video_mask)
        logits = self.classifier(self.feature_dropout(torch.cat([audio_out, video_out], dim=-1)))  # (B, C)
        return self._finish(logits, labels, losses, audio_out, video_out, a_align, v_align)

    def _single(self, audio: torch.Tensor | None, video: torch.Tensor | None,
                labels: torch.Tensor | None) -> FoalNetOutput:
        """Single-modality ablation: masked mean + Linear."""
        pooled = audio if audio is not None else video
        logits = self.classifier(self.feature_dropout(pooled))
        return self._finish(logits, labels, {}, audio, video, None, None)

    def _finish(self, logits: torch.Tensor, labels: torch.Tensor | None, losses: dict[str, torch.Tensor],
                audio_out: torch.Tensor | None, video_out: torch.Tensor | None,
                a_align: torch.Tensor | None, v_align: torch.Tensor | None) -> FoalNetOutput:
        loss = None
        if labels is not None:
            losses = {"ce": F.cross_entropy(logits, labels), **losses}
            weights = {"ce": self.config.ce_weight, "avel": self.config.avel_weight, "mem": self.config.mem_weight}
            loss = sum(weights[name] * value for name, value in losses.items())
        return FoalNetOutput(loss, losses, logits, audio_out, video_out, a_align, v_align)

    # ---- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write model.safetensors, config.json and audio_encoder/config.json (atomic writes)."""
        from safetensors.torch import save_file

        from foalnet import __version__

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        tmp = out / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
        save_file(state, str(tmp), metadata={"format": "pt", "foalnet_version": __version__})
        os.replace(tmp, out / WEIGHTS_NAME)
        write_json_atomic(out / CONFIG_NAME, {"model_type": "foalnet", "foalnet_version": __version__,
                                              **self.config.to_dict()})
        if self.uses_audio:
            save_audio_encoder_config(self.audio_encoder, self.config.audio_encoder, self.config.audio_options,
                                      out / AUDIO_ENCODER_DIR)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "FoalNet":
        """Rebuild from a folder written by save_pretrained; never downloads anything."""
        from safetensors.torch import load_file

        folder = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing, not a foalnet model folder")
        config = FoalNetConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        encoder = None
        if config.modality in ("av", "audio"):
            encoder = load_audio_encoder(folder / AUDIO_ENCODER_DIR,
                                         freeze_feature_encoder=config.freeze_feature_encoder,
                                         gradient_checkpointing=config.audio_gradient_checkpointing)
        model = cls(config, audio_encoder=encoder)
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
        model.load_state_dict(state, strict=True)
        return model.to(map_location)


def _require(x: torch.Tensor | None, name: str, mask: torch.Tensor | None, mask_name: str) -> None:
    if x is None or mask is None:
        raise UsageError(f"this model needs {name} and {mask_name} (got None)")
