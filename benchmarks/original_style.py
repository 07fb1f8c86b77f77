"""Foal-Net computed the way the authors' code computes it: the baseline of the speed benchmarks.

This is the *baseline* for the speed/memory benchmarks (benchmarks/train_step.py,
benchmarks/gpu_check.py) and the *reference* for the equivalence tests (tests/test_equivalence.py
imports this file by path). It imports nothing of foalnet (tests/test_benchmarks.py checks that).
It is written from a reading of the authors' repository (github.com/ASolitaryMan/Foal-Net:
``model.py``'s ``MultiTaskModel``, ``train.py``, ``dataloader.py``), not copied from it; what each
piece stands for:

- :func:`pad_fixed` - their collator and dataset: every waveform cut or zero-padded to 6 s
  (96,000 samples) and every video to 180 frames, whatever the batch holds; 0/1 masks.
- :meth:`OriginalStyleFoalNet.encode_audio` - their ``forward_wavlm``: transformers'
  ``WavLMModel`` on the padded batch with ``attention_mask`` passed (as a long 0/1 tensor, so
  WavLM's attention gets a key-padding mask), the CNN feature encoder frozen
  (``freeze_feature_encoder``; they call the older alias ``freeze_feature_extractor``), the
  encoder's own attention (``F.multi_head_attention_forward`` with the gated relative position
  bias; transformers' WavLM has no SDPA path), then the frame mask from the output lengths.
- ``feature_dropout`` - their three ``nn.Dropout(config.final_dropout)``: on the WavLM output, on
  the video input and on the classifier input (0.0 here by default, as FoalNet's
  ``feature_dropout``; p = 0 is the identity and draws nothing).
- padded frames zeroed in place after that dropout, as they do (a copy only where the tensor is
  still the caller's, i.e. the video when the dropout is off).
- :class:`Projection` - their ``Projection`` (LayerNorm(W1 x + Dropout(W2 GELU(W1 x))), no biases).
- :meth:`OriginalStyleFoalNet.avel_logits` / :meth:`avel_loss` - their "Task 1": mean-pooled
  features, the video projection then the audio projection, L2 rows, similarities divided by the
  temperature, the multi-positive log-softmax loss.
- :meth:`OriginalStyleFoalNet.draw_negatives_loop` - their per-row ``torch.multinomial`` with an
  ``.item()`` (a host sync) per row, audio->video rows first, then video->audio.
- :class:`HandCrossAttention` - their ``MultiHeadCrossAttention`` + ``ScaleDotProductAttention``:
  scores by ``@``, ``masked_fill(mask == 0, -10000)``, softmax, ``@ v``, output map, dropout,
  post-LN residual; every layer of a stack sees the original keys.
- :meth:`OriginalStyleFoalNet.mem_forward` + the classification pass - their "Task 2"/"Task 3":
  the fusion stacks run FOUR times per step, in their order: audio->video on the 2B MEM pairs,
  audio->video on the B positive pairs, video->audio on the 2B pairs, video->audio on the B pairs;
  after each stack the padded query frames are zeroed in place and the rest mean-pooled.
- the training step (benchmarks/train_step.py ``train_steps``) - their ``train_model``:
  ``torch.optim.AdamW(model.parameters(), lr=1e-4)`` with torch's defaults (on CPU the for-loop
  implementation; the frozen CNN has no gradients, so it is skipped), forward, backward, step,
  ``zero_grad``. Their ``Accelerator(mixed_precision='fp16')`` is plain float32 on a CPU
  (accelerate enables fp16 autocast only on GPUs); on CUDA it is ``torch.autocast`` float16 +
  a ``GradScaler``, which benchmarks/gpu_check.py uses for both implementations.

What is NOT reproduced, on purpose (spec §3 defects, docs/spec.md, that change the *function*; fixing them keeps
the reference and FoalNet computing the same thing): masks come from the true lengths (their
collator's index trick marks one frame valid for an empty item), the hard-negative fill goes into a
copy of the similarity matrix (they fill the matrix in place under ``no_grad``), and MEM pairs
without a true negative are left out. The loss that is backpropagated is spec §1's
``ce + avel + 0.1 mem``: of the two versions of their ``train.py`` in the repository, one
backpropagates the classification cross-entropy only (``loss = c_loss``) and the other intends
``c_loss + loss_avc + loss_itm`` but cannot run (``c_loss`` is commented out); the loss weights do
not change the work, the choice of terms does (see below). Not reproduced either: their
distributed all-gathers (one process here), the class-weighted sampler and DataLoader workers,
the learning-rate schedule (no cost in the step), the speaker/gender label arguments.

Measured (this 2-core CPU, shared by other jobs: load average 2.5-11; 1 torch thread; 2-layer
WavLM-Large-width encoder, batch 16, IEMOCAP-like lengths; CPU seconds per step; the same batches;
a scratch transcription of their ``MultiTaskModel``, made for this measurement and not kept, and
this module alternated step by step in one process): their model with ``loss = c_loss`` took
0.81-0.93x this module's step (5 steps), with all three losses 0.90-1.20x; the forwards cost the
same (19-26 s: the frozen CNN on 16 x 6 s alone ~11 s, WavLM's 2 layers ~6.5 s, the four fusion
passes ~6 s), their CE-only backward 13-14 s against 18-21 s. So the factor of about 2 between
this module's step and "the authors' real code" reported in the project's tracker (32.1 s against 16.1 s at 1
thread) was not reproduced: under the same conditions their code costs what this module costs, up
to the CE-only backward. docs/benchmarks.md has the table and the commands.

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
    feature_dropout: float = 0.0  # their final_dropout: on the audio features, the video and the classifier input
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
        self.audio_drop = nn.Dropout(c.feature_dropout)  # their dropout1 (WavLM output)
        self.video_drop = nn.Dropout(c.feature_dropout)  # their dropout2 (video input)
        self.cls_drop = nn.Dropout(c.feature_dropout)  # their dropout3 (classifier input)
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
        """Run one fusion stack (every layer sees the original kv) and pool over real query frames
        (padded frames zeroed in place in the last layer's output, as they do)."""
        out = q
        for layer in layers:
            out = layer(out, kv, kv_mask)
        if out is q:  # no layers: do not write into the caller's tensor
            out = q.clone()
        out[~q_mask] = 0.0
        return self.masked_mean(out, q_mask)

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
        audio = self.audio_drop(audio)  # a fresh tensor of the encoder: zeroed in place below
        dropped = self.video_drop(video)
        video = dropped.clone() if dropped is video else dropped  # never write into the caller's batch
        audio[~audio_mask] = 0.0
        video[~video_mask] = 0.0

        if labels is None:  # inference: the classification pass only
            audio_out = self.run_stack(self.a2v, audio, audio_mask, video, video_mask)
            video_out = self.run_stack(self.v2a, video, video_mask, audio, audio_mask)
            return OriginalStyleOutput(None, {}, self.classify(audio_out, video_out), audio_out, video_out)

        # their "Task 1" (AVEL), then the draws and the four fusion passes in their order
        s_av, s_va, same = self.avel_logits(audio, audio_mask, video, video_mask, labels)
        losses = {"avel": self.avel_loss(s_av, s_va, same)}
        mem, audio_out, video_out = self.mem_forward(audio, audio_mask, video, video_mask, s_av, s_va, same)
        logits = self.classify(audio_out, video_out)
        losses["ce"] = F.cross_entropy(logits, labels)
        losses["mem"] = mem
        c = self.config
        loss = losses["ce"] + c.avel_weight * losses["avel"] + c.mem_weight * losses["mem"]
        return OriginalStyleOutput(loss, losses, logits, audio_out, video_out)

    def classify(self, audio_out: torch.Tensor, video_out: torch.Tensor) -> torch.Tensor:
        """Their "Task 3": dropout on the concatenated pooled outputs, then the linear classifier."""
        return self.classifier(self.cls_drop(torch.cat([audio_out, video_out], dim=1)))

    def avel_logits(self, audio, audio_mask, video, video_mask, labels):
        """Pooled, projected, L2-normalised embeddings -> S_av, S_va [B, B] and the same-label mask."""
        a_mean, v_mean = self.masked_mean(audio, audio_mask), self.masked_mean(video, video_mask)
        v = self.video_proj(v_mean)  # their order: the video projection first
        a = self.audio_proj(a_mean)
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

    def mem_forward(self, audio, audio_mask, video, video_mask, s_av, s_va, same):
        """Their "Task 2" and the classification pass: hard negatives drawn row by row, then the
        fusion stacks on the 2B MEM pairs and on the B positive pairs, interleaved as they run them.
        Returns (L_mem, pooled audio->video output, pooled video->audio output) of the positives."""
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
        audio_out = self.run_stack(self.a2v, audio, audio_mask, video, video_mask)
        pooled_v = self.run_stack(
            self.v2a, torch.cat([video, video]), torch.cat([video_mask, video_mask]),
            torch.cat([audio, audio_neg]), torch.cat([audio_mask, audio_neg_mask]),
        )
        video_out = self.run_stack(self.v2a, video, video_mask, audio, audio_mask)
        targets = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)]).to(audio.device)
        keep = torch.cat([torch.ones(B, dtype=torch.bool, device=audio.device), has_neg])  # drop fake negatives
        ce_a = F.cross_entropy(self.a2v_head(pooled_a)[keep], targets[keep])
        ce_v = F.cross_entropy(self.v2a_head(pooled_v)[keep], targets[keep])
        return (ce_a + ce_v) / 2, audio_out, video_out


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
