"""Running the trainer as one process or as several under torchrun (torch.distributed: gloo on CPU, nccl on GPUs).

Work is split so that every rank's share adds up to exactly what one process computes: sequences are dealt out
round-robin (rank r takes sequences r, r + world, ...), per-rank sums (Gram matrices, counts, gradients) are
all-reduced, and every decision is taken from the reduced sums, so one process and N ranks reach the same model
up to float summation order. Predictor training shards layers instead (each layer is independent).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, n: int) -> list[int]:
        """The indices of n items (sequences, layers) this rank handles."""
        return list(range(self.rank, n, self.world))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the ranks, in place (returned for chaining)."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """t's elementwise maximum over the ranks, in place."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather_objects(self, obj: object) -> list[object]:
        """Every rank's obj, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


SINGLE = Dist()  # one process: the default everywhere a Dist is taken


@contextmanager
def process_group() -> Iterator[Dist]:
    """A process group when torchrun started this process (WORLD_SIZE > 1), else a single process. The group is
    destroyed on leaving: one left to the interpreter's exit can abort the rank (gloo: "terminate called without an
    active exception"), which torchrun reports as a failed run. With the group destroyed, about 1 run in 10 still
    aborted under load, so the program's ranks also leave without the interpreter's finalization (cli.entry)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield SINGLE
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    ok = False
    try:
        yield Dist(dist.get_rank(), dist.get_world_size())
        ok = True
    finally:
        if created:
            if ok:
                dist.barrier()  # no rank tears the group down while another still uses it
            dist.destroy_process_group()
