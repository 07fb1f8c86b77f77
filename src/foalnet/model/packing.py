"""Valid frames of a padded batch as one [N, ...] tensor, and back.

Per-frame work (linear maps, layer norms, dropout, residuals) on packed frames costs what the
valid frames cost, not what the padding costs; attention unpacks to [B, T, ...] with its mask.
Used by the packed WavLM encoder and the fusion layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


def spans(mask: torch.Tensor) -> torch.Tensor:
    """Per row of a [B, T] bool mask, the last valid position + 1 (0 for a row with none): the
    length a block must keep so that no valid frame of the row is cut."""
    B, T = mask.shape
    if T == 0:
        return torch.zeros(B, dtype=torch.long, device=mask.device)
    return torch.where(mask.any(1), T - mask.flip(1).int().argmax(1), 0)


def length_sorted_groups(lengths: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    """Row indices sorted by length (longest first) and cut into ``groups`` runs of about equal
    size (never more runs than rows): blocks padded to their own longest row."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return order.tensor_split(max(1, min(groups, lengths.numel())))


class Packing:
    """Index map between a padded [B, T, ...] batch and its valid frames [N, ...] (row-major)."""

    def __init__(self, mask: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """``index``: the flat positions of ``mask``'s True entries, when already known."""
        self.mask = mask
        self.batch, self.length = mask.shape
        self.full = bool(mask.all()) and self.length > 0
        if self.full:
            self.index = None
        else:
            self.index = index if index is not None else mask.reshape(-1).nonzero().squeeze(1)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        flat = padded.reshape(self.batch * self.length, *padded.shape[2:])
        return flat if self.full else flat.index_select(0, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Valid frames back in place; padding is zero. ``index_put_`` keeps only the index for
        its backward (``index_copy`` also keeps ``packed`` itself: 0.15 GiB of a cached 2-layer
        WavLM-Large-width training step, batch 16)."""
        if self.full:
            return packed.reshape(self.batch, self.length, *packed.shape[1:])
        flat = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        return flat.index_put_((self.index,), packed).reshape(self.batch, self.length, *packed.shape[1:])

    def repeat(self, times: int) -> "Packing":
        """The packing of the batch repeated ``times`` times along the batch axis (``x.repeat``):
        its packed frames are ``pack(x).repeat(times, 1)``."""
        if times == 1:
            return self
        index = None
        if not self.full:  # the same positions, shifted by one batch per copy
            offsets = torch.arange(times, device=self.index.device) * (self.batch * self.length)
            index = (self.index[None, :] + offsets[:, None]).reshape(-1)
        return Packing(self.mask.repeat(times, 1), index)

    def counts(self) -> torch.Tensor:
        """Valid frames per row, [B]."""
        return self.mask.sum(-1)

    def mean(self, packed: torch.Tensor) -> torch.Tensor:
        """Mean of each row's valid frames [B, D] float32 (zeros for a row with none); summed in
        float32, where a float16 sum over hundreds of frames would overflow. The sum is a product
        with the [B, N] row-membership matrix, whose backward keeps only that matrix
        (``index_add_`` would also keep ``packed``)."""
        D = packed.shape[-1]
        if self.full:
            return packed.view(self.batch, self.length, D).float().mean(1)
        rows = self.index // self.length
        members = (rows[None, :] == torch.arange(self.batch, device=rows.device)[:, None]).float()
        with torch.autocast(packed.device.type, enabled=False):
            total = members @ packed.float()
        return total / self.counts().clamp(min=1).float()[:, None]


def move_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Row i of ``x`` [N, ...] moved to row ``positions[i]`` (a permutation of range(N)).

    The same as ``x.index_select(0, argsort(positions))``, but as a scatter whose backward pass is
    a gather: ``index_select``'s backward scatters into an [N, ...] tensor of zeros it must fill."""
    return x.new_empty(x.shape).index_put_((positions,), x)


@dataclass
class LengthGroup:
    """Rows of similar length whose attention runs as one [b, heads, T_g, ...] block."""

    items: torch.Tensor  # the group's rows of the batch (longest first)
    rows: torch.Tensor  # positions of their valid frames in the packed [N, ...] tensor
    packing: Packing  # the group's own [b, T_g] packing (T_g = its longest row)

    @cached_property
    def key_bias(self) -> torch.Tensor:
        """[b, 1, 1, T_g] float32: 0 for the group's valid positions, -inf for its padding (an
        additive self-attention key mask; computed once, used by every layer)."""
        bias = torch.zeros(self.packing.mask.shape, dtype=torch.float32, device=self.packing.mask.device)
        return bias.masked_fill(~self.packing.mask, float("-inf"))[:, None, None, :]


@dataclass
class Grouping:
    """A batch's length groups and the row permutations between packed and group order."""

    groups: list[LengthGroup]
    order: torch.Tensor  # packed rows in group order: the groups' ``rows`` one after another
    restore: torch.Tensor  # argsort(order): where each packed row sits in group order

    @property
    def sizes(self) -> list[int]:
        """Rows of each group, in group order (for ``split``)."""
        return [group.rows.numel() for group in self.groups]

    def to_group_order(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed rows [N, ...] in group order, moved once (``move_rows``)."""
        return move_rows(packed, self.restore)

    def to_packed(self, per_group: list[torch.Tensor]) -> torch.Tensor:
        """Each group's rows -> packed order [N, ...]."""
        return move_rows(torch.cat(per_group), self.order)


def length_groups(mask: torch.Tensor, groups: int) -> Grouping:
    """The batch's rows sorted by length and cut into ``groups`` runs of about equal size.

    Attention is computed for every padded query (and, in self-attention, key) position of its
    block: on IEMOCAP-like batches (1-8 s cut at 6 s, 16 items) one block holds 2.0-2.4x the
    self-attention score entries the items need, four blocks 1.1-1.4x (``benchmarks/train_step.py``
    batches). Computed once per forward, the same for every layer."""
    B, T = mask.shape
    lengths = spans(mask)
    position = torch.full((B, T), -1, dtype=torch.long, device=mask.device)
    position[mask] = torch.arange(int(mask.sum()), device=mask.device)  # packed row of each frame
    found = []
    for items in length_sorted_groups(lengths, groups):
        longest = int(lengths[items].max())
        group_mask = mask[items, :longest]
        found.append(LengthGroup(items=items, rows=position[items, :longest][group_mask], packing=Packing(group_mask)))
    order = torch.cat([group.rows for group in found])
    return Grouping(found, order, torch.argsort(order))
