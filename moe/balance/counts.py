"""Shared helpers of the stateful balancers: local expert counts and their data-parallel sum.

``all_reduce_sum`` sums a tensor over the default (data-parallel) process group when
``torch.distributed`` is available and initialised with more than one rank, and returns it unchanged
otherwise, so every balancer runs the same code in a single process and under DDP. It is a
collective: every rank must call it the same number of times (true for balancers, which run on every
forward of their layer on every rank, and in ``on_optimizer_step``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moe.types import Routing


def distributed_world_size() -> int:
    """Ranks of the default process group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the SUM of ``x`` over the default process group (``x`` is not modified)."""
    x = x.detach().clone()
    if distributed_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def local_counts_E(routing: Routing, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[E] assignments dispatched to each expert in this forward (``tokens_per_expert_E``), detached."""
    return routing.tokens_per_expert_E.detach().to(dtype)
