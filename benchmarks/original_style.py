"""A straightforward reading of SPEC §1, executed the way the authors' training code runs.

This is the *baseline* for the speed/memory benchmarks and the *reference* for the equivalence
tests (tests/test_equivalence.py imports this file by path). It is deliberately naive:

- every item is padded to a fixed 6 s / 180 frames (:func:`pad_fixed`), whatever the batch holds;
- the cross-attention stacks run three times per step: once on the 2B MEM pairs and once more on
  the B positive pairs for classification;
- attention is written by hand (scores, ``masked_fill(-10000)``, softmax, weighted sum);
- hard negatives are drawn row by row in a Python loop, with a ``.item()`` (a device sync) per row.

The known defects of the original (SPEC §3) that change the *function* are fixed here so that the
reference and FoalNet compute the same thing: masks come from true lengths, the hard-negative fill
goes into a copy of the similarity matrix, and MEM pairs without a true negative are left out.

The parameter names mirror FoalNet's layout; :func:`foalnet_state_dict_to_original` is the
explicit mapping and :meth:`OriginalStyleFoalNet.from_foalnet` copies a FoalNet's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NEG_FILL = -10000.0  # the original's fill value for masked scores and same-label similarities


@dataclass
class OriginalStyleConfig:
    """Dimensions and loss weights of the reference model (defaults: the paper preset)."""

    audio_dim: int = 1024  # width of the audio encoder's last hidden state
    video_dim: int = 768  # width of the cached per-frame image embeddings
    proj_dim: int = 512  # AVEL projection width
    fusion_layers: int = 2  # cross-attention layers per direction
    num_heads: int = 4  # heads in every cross-attention layer
    num_classes: int = 4  # emotion classes
    proj_dropout: float = 0.5  # dropout inside the AVEL projection blocks
    fusion_dropout: float = 0.1  # dropout after each cross-attention output map
    tau_init: float = math.log(1 / 0.07)  # AVEL temperature; logits are DIVIDED by it
    avel_weight: float = 1.0  # weight of L_avel in the total loss
    mem_weight: float = 0.1  # weight of L_mem in the total loss
    max_samples: int = 96_000  # every waveform is cut/padded to this many samples (6 s)
    max_frames: int = 180  # every video is cut/padded to this many frames


@dataclass
class OriginalStyleOutput:
    """Loss (when labels are given), per-term losses, logits and the pooled fusion outputs."""

    loss: torch.Tensor | None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    audio_embeds: torch.Tensor | None = None
    video_embeds: torch.Tensor | None = None


def pad_fixed(
    waveforms: list[torch.Tensor], videos: list[torch.Tensor], max_samples: int, max_frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut and zero-pad every item to the fixed sizes, as the original collator does.

    Returns ``waveform [B, max_samples]``, ``waveform_mask [B, max_samples]`` (bool),
    ``video [B, max_frames, D]``, ``video_mask [B, max_frames]`` (bool). Masks come from the true
    lengths (the original's off-by-one for empty items is not reproduced).
    """
    B = len(waveforms)
    D = videos[0].shape[-1]
    wav = torch.zeros(B, max_samples)
    wav_mask = torch.zeros(B, max_samples, dtype=torch.bool)
    vid = torch.zeros(B, max_frames, D)
    vid_mask = torch.zeros(B, max_frames, dtype=torch.bool)
    for i, (w, v) in enumerate(zip(waveforms, videos)):
        n, t = min(len(w), max_samples), min(len(v), max_frames)
        wav[i, :n] = w[:n]
        wav_mask[i, :n] = True
        vid[i, :t] = v[:t]
        vid_mask[i, :t] = True
    return wav, wav_mask, vid, vid_mask


class Projection(nn.Module):
    """AVEL projection: LayerNorm(W1 x + Dropout(W2 GELU(W1 x))), no biases."""

    def __init__(self, d_in: int, d_out: int, p: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.drop = nn.Dropout(p)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.linear1(x)
        e2 = self.drop(self.linear2(F.gelu(e1)))
        return self.norm(e1 + e2)


class HandCrossAttention(nn.Module):
    """One cross-attention layer with hand-written attention and a post-LN residual."""

    def __init__(self, q_dim: int, kv_dim: int, num_heads: int, p: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(q_dim, q_dim)
        self.k_proj = nn.Linear(kv_dim, q_dim)
        self.v_proj = nn.Linear(kv_dim, q_dim)
        self.out_proj = nn.Linear(q_dim, q_dim)
        self.drop = nn.Dropout(p)
        self.norm = nn.LayerNorm(q_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        return x.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)  # (B, H, L, d)

    def forward(self, q_in: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """q_in [B, Lq, Dq], kv [B, Lk, Dk], kv_mask [B, Lk] bool (True = real frame)."""
        B, Lq, D = q_in.shape
        q, k, v = self._split(self.q_proj(q_in)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        scores = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
        scores = scores.masked_fill(kv_mask[:, None, None, :] == 0, NEG_FILL)
        out = torch.softmax(scores, dim=-1) @ v  # (B, H, Lq, d)
        out = out.transpose(1, 2).contiguous().view(B, Lq, D)
        out = self.drop(self.out_proj(out))
        return self.norm(out + q_in)


class OriginalStyleFoalNet(nn.Module):
    """Foal-Net computed the naive way; see the module docstring."""

    def __init__(self, config: OriginalStyleConfig, audio_encoder: nn.Module) -> None:
        """``audio_encoder``: a transformers wav2vec2-family model (e.g. ``WavLMModel``)."""
        super().__init__()
        c = self.config = config
        hidden = getattr(audio_encoder.config, "hidden_size", None)
        if hidden != c.audio_dim:
            raise ValueError(f"audio encoder hidden_size {hidden} != audio_dim {c.audio_dim}")
        self.audio_encoder = audio_encoder
        self.audio_encoder.freeze_feature_encoder()
        self.audio_proj = Projection(c.audio_dim, c.proj_dim, c.proj_dropout)
        self.video_proj = Projection(c.video_dim, c.proj_dim, c.proj_dropout)
        self.tau = nn.Parameter(torch.tensor(c.tau_init))
        self.a2v = nn.ModuleList(
            HandCrossAttention(c.audio_dim, c.video_dim, c.num_heads, c.fusion_dropout) for _ in range(c.fusion_layers)
        )
        self.v2a = nn.ModuleList(
            HandCrossAttention(c.video_dim, c.audio_dim, c.num_heads, c.fusion_dropout) for _ in range(c.fusion_layers)
        )
        self.a2v_head = nn.Linear(c.audio_dim, 2)
        self.v2a_head = nn.Linear(c.video_dim, 2)
        self.classifier = nn.Linear(c.audio_dim + c.video_dim, c.num_classes)

    # -- weight copying -------------------------------------------------------------------
    @classmethod
    def from_foalnet(cls, model: nn.Module, config: OriginalStyleConfig, audio_encoder: nn.Module) -> "OriginalStyleFoalNet":
        """Build a reference with exactly the weights of a FoalNet (``audio_encoder`` gets overwritten)."""
        ref = cls(config, audio_encoder)
        mapped = foalnet_state_dict_to_original(model.state_dict())
        missing, unexpected = ref.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise ValueError(f"weight mapping incomplete: missing={missing[:8]} unexpected={unexpected[:8]}")
        return ref

    # -- pieces ---------------------------------------------------------------------------
    def encode_audio(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform [B, S] -> hidden [B, La, Da], frame_mask [B, La] (transformers' length rule)."""
        hidden = self.audio_encoder(waveform, attention_mask=waveform_mask.long()).last_hidden_state
        # frame j is valid iff j < output_length(valid samples); computed from the lengths rather
        # than transformers' index trick, which marks every frame valid for an empty input
        lengths = self.audio_encoder._get_feat_extract_output_lengths(waveform_mask.sum(-1))
        frame_mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        return hidden, frame_mask

    @staticmethod
    def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] with padded positions already zero -> [B, D]."""
        return x.sum(dim=1) / mask.sum(dim=1).view(-1, 1)

    def run_stack(self, layers: nn.ModuleList, q: torch.Tensor, q_mask: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """Run one fusion stack (every layer sees the original kv) and pool over real query frames."""
        for layer in layers:
            q = layer(q, kv, kv_mask)
        q = q.clone()
        q[~q_mask] = 0.0
        return self.masked_mean(q, q_mask)

    def draw_negatives_loop(self, weights: torch.Tensor) -> list[int]:
        """One multinomial draw per row, with a host sync (``.item()``) per row, as the original."""
        picks = []
        for b in range(weights.shape[0]):
            picks.append(torch.multinomial(weights[b], 1).item())
        return picks

    # -- forward --------------------------------------------------------------------------
    def forward(
        self,
        waveform: torch.Tensor,
        waveform_mask: torch.Tensor,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> OriginalStyleOutput:
        """waveform/waveform_mask [B, S], video [B, T, Dv], video_mask [B, T], labels [B]."""
        audio, audio_mask = self.encode_audio(waveform, waveform_mask)
        audio = audio.clone()
        video = video.clone()
        audio[~audio_mask] = 0.0
        video[~video_mask] = 0.0

        # classification pass: the fusion stacks on the B positive pairs
        audio_out = self.run_stack(self.a2v, audio, audio_mask, video, video_mask)
        video_out = self.run_stack(self.v2a, video, video_mask, audio, audio_mask)
        logits = self.classifier(torch.cat([audio_out, video_out], dim=1))
        if labels is None:
            return OriginalStyleOutput(None, {}, logits, audio_out, video_out)

        losses = {"ce": F.cross_entropy(logits, labels)}
        s_av, s_va, same = self.avel_logits(audio, audio_mask, video, video_mask, labels)
        losses["avel"] = self.avel_loss(s_av, s_va, same)
        losses["mem"] = self.mem_loss(audio, audio_mask, video, video_mask, s_av, s_va, same)
        c = self.config
        loss = losses["ce"] + c.avel_weight * losses["avel"] + c.mem_weight * losses["mem"]
        return OriginalStyleOutput(loss, losses, logits, audio_out, video_out)

    def avel_logits(self, audio, audio_mask, video, video_mask, labels):
        """Pooled, projected, L2-normalised embeddings -> S_av, S_va [B, B] and the same-label mask."""
        a = self.audio_proj(self.masked_mean(audio, audio_mask))
        v = self.video_proj(self.masked_mean(video, video_mask))
        a = a / torch.norm(a, dim=-1, keepdim=True)
        v = v / torch.norm(v, dim=-1, keepdim=True)
        s_av = a @ v.T / self.tau
        s_va = v @ a.T / self.tau
        same = labels.view(-1, 1) == labels.view(1, -1)  # (B, B)
        return s_av, s_va, same

    @staticmethod
    def avel_loss(s_av: torch.Tensor, s_va: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """Un-normalised multi-positive contrastive loss, both directions averaged."""
        t = same.float()
        l_av = -torch.sum(F.log_softmax(s_av, dim=1) * t, dim=1).mean()
        l_va = -torch.sum(F.log_softmax(s_va, dim=1) * t, dim=1).mean()
        return (l_av + l_va) / 2

    def mem_loss(self, audio, audio_mask, video, video_mask, s_av, s_va, same) -> torch.Tensor:
        """Matching loss on [positives; hard negatives], fusion stacks run on all 2B pairs."""
        B = audio.shape[0]
        with torch.no_grad():
            w_av = torch.softmax(s_av.detach().clone().masked_fill(same, NEG_FILL), dim=1)
            w_va = torch.softmax(s_va.detach().clone().masked_fill(same, NEG_FILL), dim=1)
        has_neg = (~same).any(dim=1)  # rows with a true negative (all or none within a batch)
        neg_v = self.draw_negatives_loop(w_av)
        neg_a = self.draw_negatives_loop(w_va)
        video_neg = torch.stack([video[i] for i in neg_v])
        video_neg_mask = torch.stack([video_mask[i] for i in neg_v])
        audio_neg = torch.stack([audio[i] for i in neg_a])
        audio_neg_mask = torch.stack([audio_mask[i] for i in neg_a])

        pooled_a = self.run_stack(
            self.a2v, torch.cat([audio, audio]), torch.cat([audio_mask, audio_mask]),
            torch.cat([video, video_neg]), torch.cat([video_mask, video_neg_mask]),
        )
        pooled_v = self.run_stack(
            self.v2a, torch.cat([video, video]), torch.cat([video_mask, video_mask]),
            torch.cat([audio, audio_neg]), torch.cat([audio_mask, audio_neg_mask]),
        )
        targets = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)]).to(audio.device)
        keep = torch.cat([torch.ones(B, dtype=torch.bool, device=audio.device), has_neg])  # drop fake negatives
        ce_a = F.cross_entropy(self.a2v_head(pooled_a)[keep], targets[keep])
        ce_v = F.cross_entropy(self.v2a_head(pooled_v)[keep], targets[keep])
        return (ce_a + ce_v) / 2


# ---------------------------------------------------------------------------------------
# FoalNet -> reference parameter mapping
# ---------------------------------------------------------------------------------------
# (FoalNet prefix, reference prefix); first match wins; every other name is identical:
#   audio_proj.{linear1,linear2,norm}.*, video_proj.*, tau, a2v_head.*, v2a_head.*, classifier.*
PREFIX_MAP: list[tuple[str, str]] = [
    ("audio_encoder.model.", "audio_encoder."),  # FoalNet wraps the transformers model (HFAudioEncoder)
    ("a2v.layers.", "a2v."),  # CrossAttentionStack.layers.{i}.{q,k,v,out}_proj / norm
    ("v2a.layers.", "v2a."),
]


def foalnet_state_dict_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename FoalNet parameters to this module's names (see PREFIX_MAP)."""
    out = {}
    for name, tensor in state.items():
        for src, dst in PREFIX_MAP:
            if name.startswith(src):
                out[dst + name[len(src):]] = tensor
                break
        else:
            out[name] = tensor
    return out
