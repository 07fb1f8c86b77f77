"""Extraction split over the processes of a launcher (``accelerate launch`` / ``torchrun``).

Each process takes every ``world``-th unit of work (a dialog video, an utterance), writes its own
arrays (atomic, named by content key) and appends its index lines to its own shard
(``index.r<rank>.jsonl``), so no two processes write the same file. At the end the processes meet
once (gloo, CPU: whatever device the encoder runs on): the main process merges the shards into
``index.jsonl`` and writes the one ``rejected.jsonl``. A process that dies leaves complete arrays
and index lines only; a rerun reads the shards, reuses every item they list and computes the rest.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence, TypeVar

T = TypeVar("T")


class Workers:
    """This process's rank among ``world`` extraction processes (one process: rank 0 of 1)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in a world of {world} processes")
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._created_group = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Workers":
        """Rank and world size the launcher put in the environment (torchrun, accelerate)."""
        env = os.environ if env is None else env
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
                   int(env.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> str | None:
        """Name of this process's index shard; None when alone (it writes index.jsonl)."""
        return f"r{self.rank}" if self.world > 1 else None

    def device(self, name: str) -> str:
        """``cuda`` means this process's own GPU (``cuda:<local rank>``) when there are several."""
        return f"cuda:{self.local_rank}" if name == "cuda" and self.world > 1 else name

    def take(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (the same order on every process): every world-th."""
        return list(items[self.rank::self.world])

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (a barrier too)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
            self._created_group = True
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._created_group = False


def open_shared(store, workers: Workers):
    """Make ``store`` (opened by every process with its shard) safe to write into: the main process
    first folds shards left by an interrupted run into index.jsonl, then everyone re-reads it."""
    if workers.is_main:
        store.merge_index()
    if workers.world > 1:
        workers.gather(None)
        store.reload()
    return store


def finish_shared(store, workers: Workers, report, merge):
    """Meet the other processes with this one's report; the main process merges the shards and
    writes the one rejected.jsonl. Returns the merged report (the same on every process)."""
    if workers.world == 1:
        return report
    merged = merge(workers.gather(report))
    if workers.is_main:
        store.merge_index()
        store.write_rejected(merged.rejected)
    return merged

