"""Expert capacity and token dropping for token-choice routing (GShard; Switch, Fedus et al.
2101.03961 §2.2; Megatron-Core ``moe_expert_capacity_factor`` / ``moe_token_drop_policy``).

Each expert processes at most

    C = ceil(k · T / E · capacity_factor)

assignments of the T tokens of a micro-batch. When more are routed to it, it keeps the C with the
highest priority and the rest are dropped: they contribute nothing, and the token keeps its
residual (and the shared expert, if any). Priorities:

- ``probs``: the router's probability of that (token, expert) pair, highest first (Megatron default);
- ``position``: earlier tokens first (GShard / Switch), so later tokens of the batch are dropped.

A capacity factor of 1.0 is exactly the balanced load; Switch trains at 1.0–1.25 and ST-MoE evaluates
at 2.0. The Routing that comes out lists only the kept assignments, with ``num_dropped`` counting
the others, so experts and balancers need no special case.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from moe.types import Routing

DROP_POLICIES = ("probs", "position")


def check_capacity_options(capacity_factor: float | None, drop_policy: str, field: str = "model") -> None:
    if capacity_factor is not None and not capacity_factor > 0:
        raise ValueError(f"{field}.capacity_factor={capacity_factor} must be > 0 (or null for no dropping)")
    if drop_policy not in DROP_POLICIES:
        raise ValueError(f"{field}.drop_policy={drop_policy!r} is not one of {DROP_POLICIES}")


def expert_capacity(*, num_tokens: int, top_k: float, num_experts: int, capacity_factor: float) -> int:
    """C = ceil(k·T/E · capacity_factor)."""
    return math.ceil(top_k * num_tokens / num_experts * capacity_factor)


def drop_over_capacity(routing: Routing, *, capacity_factor: float, drop_policy: str = "probs") -> Routing:
    """The routing with each expert's assignments beyond its capacity removed."""
    E, N = routing.num_experts, routing.expert_ids_N.numel()
    capacity = expert_capacity(num_tokens=routing.num_tokens, top_k=routing.top_k, num_experts=E,
                               capacity_factor=capacity_factor)
    if N == 0 or int(routing.tokens_per_expert_E.max()) <= capacity:
        return routing
    if drop_policy == "probs":
        priority_N = -routing.probs_TE.detach()[routing.token_ids_N, routing.expert_ids_N]
    else:
        priority_N = routing.token_ids_N.to(torch.float64)
    # group by expert, best priority first inside each group (two stable sorts = a lexicographic sort)
    by_priority_N = torch.argsort(priority_N, stable=True)
    order_N = by_priority_N[torch.argsort(routing.expert_ids_N[by_priority_N], stable=True)]
    group_start_E = torch.cumsum(routing.tokens_per_expert_E, 0) - routing.tokens_per_expert_E
    rank_N = torch.arange(N, device=order_N.device) - group_start_E[routing.expert_ids_N[order_N]]
    keep_N = torch.zeros(N, dtype=torch.bool, device=order_N.device)
    keep_N[order_N[rank_N < capacity]] = True
    kept_experts_N = routing.expert_ids_N[keep_N]
    return replace(
        routing,
        token_ids_N=routing.token_ids_N[keep_N],
        expert_ids_N=kept_experts_N,
        weights_N=routing.weights_N[keep_N],
        tokens_per_expert_E=torch.bincount(kept_experts_N, minlength=E),
        num_dropped=routing.num_dropped + int(N - keep_N.sum()),
    )
