"""Expert parallelism: each rank holds E/N of a layer's routed experts; tokens travel to their experts'
ranks by all-to-all and come back the same way (GShard, Lepikhin et al. 2006.16668 §2.2; the dispatch of
DeepSpeed-MoE and torchtitan).

The W ranks form W/N expert-parallel groups of N consecutive ranks. Rank i of a group holds experts
[i·E/N, (i+1)·E/N) of every MoE layer (E_l = E/N of them); the W/N ranks with the same i hold the same
experts and are that shard's *replica group*. Every rank is still a data-parallel rank with its own
tokens, router, balancers and routing statistics: the router sees only local tensors and the dispatch
below replaces ``experts(x_TD, routing)``:

1. sort the local assignments by expert (moe/experts/permute.py): since each rank's experts are
   contiguous, the rows are then grouped by destination rank too;
2. all-to-all the per-expert row counts [E] (no gradient) → received counts [N, E_l] (source rank ×
   local expert), and from them the row counts each rank sends and receives (the one host sync);
3. all-to-all the rows (``torch.distributed.nn.functional.all_to_all_single``, autograd-aware: its
   backward is the reverse all-to-all of the gradients);
4. reorder the received rows from source-major to expert-major, run the local experts on them with the
   backend's ``expert_outputs`` (grouped GEMMs or the sorted loop), undo the reorder;
5. all-to-all the outputs back and combine them with the gate weights, as one process would.

Every row meets the same weights in the same arithmetic as with E experts in one process, so the
layer's output and every gradient equal EP=1's up to the order of float sums (tests/parallel/).

Gradients: an expert's gradient on its rank sums the contributions of every rank of the group (the
backward all-to-all brings them). To equal the data-parallel mean that DDP gives the other
parameters, :func:`sync_expert_grads` sums it over the replica group and divides by W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_to_all_single

from moe.experts.grouped import GroupedExperts
from moe.experts.permute import combine, gather_rows, sort_by_expert
from moe.experts.swiglu import compute_dtype
from moe.types import Routing


@dataclass(frozen=True)
class ExpertParallelGroup:
    """This rank's place in the expert-parallel layout: ``size`` N ranks per group, ``index`` i within its
    group, ``group`` the process group of its N ranks, ``replicas`` the group of the W/N ranks holding the
    same experts (None when W = N), ``world_size`` W."""

    size: int
    index: int
    group: dist.ProcessGroup
    replicas: dist.ProcessGroup | None
    world_size: int

    @classmethod
    def create(cls, size: int) -> ExpertParallelGroup:
        """The layout for the default process group (a collective: every rank calls it once)."""
        world, rank = dist.get_world_size(), dist.get_rank()
        groups = [dist.new_group(list(range(start, start + size))) for start in range(0, world, size)]
        replica_groups = [dist.new_group(list(range(i, world, size))) for i in range(size)] if world > size else None
        return cls(size=size, index=rank % size, group=groups[rank // size],
                   replicas=None if replica_groups is None else replica_groups[rank % size], world_size=world)

    def local_slice(self, num_experts: int) -> slice:
        """The experts this rank holds, of ``num_experts``."""
        per_rank = num_experts // self.size
        return slice(self.index * per_rank, (self.index + 1) * per_rank)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The full stack [E, ...] from every group member's [E_l, ...] (a collective of the group)."""
        full = local.new_empty((local.shape[0] * self.size, *local.shape[1:]))
        dist.all_gather_into_tensor(full, local.contiguous(), group=self.group)
        return full


def check_expert_backend(experts: torch.nn.Module) -> None:
    """Expert parallelism runs the backend's ``expert_outputs`` on the received rows: GroupedExperts'."""
    if type(experts) is not GroupedExperts:
        raise ValueError(f"parallel.expert > 1 needs experts=grouped or experts=sorted_loop (GroupedExperts); "
                         f"this model's experts are {type(experts).__name__}")


def expert_parallel_forward(experts: GroupedExperts, x_TD: torch.Tensor, routing: Routing,
                            ep: ExpertParallelGroup) -> torch.Tensor:
    """y_TD of ``routing`` (over all E experts) with ``experts`` holding this rank's E_l of them."""
    dtype = compute_dtype(x_TD)
    sorted_ = sort_by_expert(routing)
    x_ND = gather_rows(x_TD, sorted_, dtype)
    sent_E = routing.tokens_per_expert_E
    received_E = torch.empty_like(sent_E)
    dist.all_to_all_single(received_E, sent_E.contiguous(), group=ep.group)
    received_SL = received_E.view(ep.size, -1)  # rows from each source rank, per local expert
    send_splits = sent_E.view(ep.size, -1).sum(1).tolist()
    receive_splits = received_SL.sum(1).tolist()
    x_MD = all_to_all_single(x_ND.new_empty(sum(receive_splits), x_ND.shape[1]), x_ND, receive_splits,
                             send_splits, group=ep.group)
    order_M = expert_major_order(received_SL)
    out_local_MD = experts.expert_outputs(x_MD.index_select(0, order_M), received_SL.sum(0),
                                          experts.stacked_weights(dtype))
    out_MD = out_local_MD.index_select(0, torch.argsort(order_M))  # back to source-major
    out_ND = all_to_all_single(out_MD.new_empty(x_ND.shape[0], out_MD.shape[1]), out_MD, send_splits,
                               receive_splits, group=ep.group)
    return combine(out_ND, sorted_, x_TD.shape[0])


def expert_major_order(received_SL: torch.Tensor) -> torch.Tensor:
    """The permutation [M] that takes received rows (source-major: source s's rows for local expert l in
    order) to expert-major (all of local expert 0's rows, then 1's, ...), keeping each source's order."""
    sources, local_experts = received_SL.shape
    segment_M = torch.repeat_interleave(torch.arange(sources * local_experts, device=received_SL.device),
                                        received_SL.reshape(-1))
    expert_major_key_M = (segment_M % local_experts) * sources + segment_M // local_experts
    return torch.argsort(expert_major_key_M, stable=True)
