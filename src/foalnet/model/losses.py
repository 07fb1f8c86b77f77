"""Loss helpers of Foal-Net: masked pooling, AVEL (spec §1.4), hard negatives and MEM (§1.6).

Kept free of module state so that they can be pinned on hand-computed examples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Fill value for same-label entries before the hard-negative softmax (as the original): with at
# least one different-label entry in a row, same-label probabilities underflow to exactly 0.
SAME_LABEL_FILL = -10000.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid time steps: x [B,T,D], mask [B,T] bool -> [B,D] float32; no valid step ->
    zeros. Summed in float32 with autocast off: a float16 sum over hundreds of frames overflows."""
    with torch.autocast(x.device.type, enabled=False):
        weights = mask.float().unsqueeze(1)  # (B, 1, T)
        count = weights.sum(dim=2).clamp(min=1.0)  # (B, 1)
        return torch.bmm(weights, x.float()).squeeze(1) / count  # one pass over x, forward and backward


def label_targets(labels: torch.Tensor, labels_all: torch.Tensor) -> torch.Tensor:
    """T[i,j] = 1 if labels[i] == labels_all[j] else 0 ([B] x [N] -> [B,N] float), NOT row-normalised."""
    return (labels[:, None] == labels_all[None, :]).float()


def multi_positive_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i( -sum_j T[i,j] * log_softmax(logits)[i,j] ) for logits, targets [B,N]."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def avel_loss(
    audio: torch.Tensor,
    video: torch.Tensor,
    audio_all: torch.Tensor,
    video_all: torch.Tensor,
    labels: torch.Tensor,
    labels_all: torch.Tensor,
    tau: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Audio-video emotion alignment loss.

    audio, video [B,P] and audio_all, video_all [N,P] are L2-normalised (N = gathered batch, B
    without data parallelism); labels [B], labels_all [N]. The logits are DIVIDED by the raw
    temperature parameter tau (not exp'd, not clamped). Returns (L_avel, S_av [B,N], S_va [B,N]).
    """
    sim_av = audio @ video_all.T / tau  # (B, N)
    sim_va = video @ audio_all.T / tau  # (B, N)
    targets = label_targets(labels, labels_all)
    loss = (multi_positive_nll(sim_av, targets) + multi_positive_nll(sim_va, targets)) / 2
    return loss, sim_av, sim_va


def hard_negative_probs(sim: torch.Tensor | None, same_label: torch.Tensor) -> torch.Tensor:
    """Row-wise sampling weights [B,N] for a different-emotion partner.

    From a detached COPY of the similarity (the loss's matrix is never edited): same-label entries
    set to -10000, softmax per row. Without a similarity (MEM enabled but AVEL not) every
    different-label entry is equally likely. A row with no different-label entry is uniform, as
    in the original; its draw is not a true negative and is masked out of the MEM loss.
    """
    if sim is None:
        sim = torch.zeros(same_label.shape, device=same_label.device)
    masked = sim.detach().float().masked_fill(same_label, SAME_LABEL_FILL)
    return F.softmax(masked, dim=1)


def draw_negatives(probs_av: torch.Tensor, probs_va: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row, vectorised, from the global torch RNG, in this fixed order:
    ``torch.multinomial(probs_av, 1)`` (a video for each audio) THEN
    ``torch.multinomial(probs_va, 1)`` (an audio for each video). Returns two [B] long tensors."""
    idx_av = torch.multinomial(probs_av, 1).squeeze(1)
    idx_va = torch.multinomial(probs_va, 1).squeeze(1)
    return idx_av, idx_va


def mem_loss(
    logits_a2v: torch.Tensor,
    logits_v2a: torch.Tensor,
    valid_a2v: torch.Tensor,
    valid_v2a: torch.Tensor,
) -> torch.Tensor:
    """Matching loss (CE_a2v + CE_v2a) / 2.

    logits_* [2B,2]: rows 0..B-1 are the true pairs (target 1), rows B..2B-1 the drawn negatives
    (target 0). valid_* [B] bool says which drawn pairs really have different labels; the others
    are left out of the mean (spec §3: no "not matching" target for a same-emotion pair).
    """
    B = valid_a2v.shape[0]
    device = logits_a2v.device
    targets = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)]).to(device)
    ones = torch.ones(B, dtype=torch.bool, device=device)
    return (
        _masked_ce(logits_a2v, targets, torch.cat([ones, valid_a2v]))
        + _masked_ce(logits_v2a, targets, torch.cat([ones, valid_v2a]))
    ) / 2


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the kept rows only."""
    per_row = F.cross_entropy(logits, targets, reduction="none")  # (2B,)
    keep = keep.to(per_row.dtype)
    return (per_row * keep).sum() / keep.sum().clamp(min=1.0)
