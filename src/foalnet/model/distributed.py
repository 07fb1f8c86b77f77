"""Gathering a batch from all data-parallel ranks for AVEL and MEM (spec §1.4, §1.6).

Other ranks' entries carry no gradient (as in the original); this rank's slice is the local tensor
itself, so its gradient is kept (and a single process gets exactly the local computation back).
Ranks may hold batches of different sizes and sequence lengths: every dimension is padded to the
largest size over the ranks before ``all_gather`` (zeros / False), then each rank's batch is cut
back to its own size. Padded time steps are invalid in the gathered masks, so they change nothing.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_shapes(x: torch.Tensor) -> torch.Tensor:
    """[world, ndim] long: every rank's shape of ``x``."""
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    return torch.stack(shapes)


def _pad_to(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Zero-pad every dimension of ``x`` at the end up to ``shape``."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(shape)):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B_r, ...] from all ranks along dim 0 (rank order) -> [sum B_r, ...max].

    Without torch.distributed (or with one process) returns ``x`` itself.
    """
    if not is_distributed():
        return x
    is_bool = x.dtype == torch.bool
    local = x.to(torch.uint8) if is_bool else x  # bool all_gather is not supported by every backend
    shapes = _all_shapes(local)  # (world, ndim)
    max_shape = shapes.max(dim=0).values.tolist()
    padded = _pad_to(local, max_shape)
    parts = [torch.empty_like(padded) for _ in range(len(shapes))]
    with torch.no_grad():
        dist.all_gather(parts, padded.detach().contiguous())
    parts[dist.get_rank()] = padded  # own slice keeps its autograd history
    out = torch.cat([part[: int(size[0])] for part, size in zip(parts, shapes)], dim=0)
    return out.bool() if is_bool else out
