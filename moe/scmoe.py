"""Self-contrast decoding of MoE models (SCMoE; Shi et al., NeurIPS 2024, 2405.14507): the unchosen experts
contribute through a second, weak forward whose logits are contrasted with the strong ones.

At every step, with separate decode states:
- strong logits z_s: the model as trained (its top-k routing);
- weak logits z_w: the same model with *rank-r routing*: each routed layer sends every token to the expert
  it ranks r-th (by router probability, 1 = best) alone, with weight 1 (the paper's weak model: r = 2);
- plausibility head V = {v : z_s[v] ≥ log α + max z_s} (α = 0.1);
- scores (1 + β)·z_s − β·z_w on V, −∞ elsewhere (β = 0.5 in the released code); then argmax, or sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from moe.types import Routing


@dataclass(frozen=True)
class SCMoE:
    """SCMoE's settings: β (contrast strength), α (plausibility cutoff), r (the weak pass's expert rank)."""

    beta: float = 0.5
    alpha: float = 0.1
    rank: int = 2

    def check(self, model: nn.Module) -> None:
        """One-line errors before any work: the values, and a model with routed layers whose routers rank."""
        if not self.beta >= 0:
            raise ValueError(f"scmoe beta={self.beta} must be >= 0")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"scmoe alpha={self.alpha} must lie in (0, 1]")
        layers = getattr(model, "moe_layers", [])
        if not layers:
            raise ValueError("SCMoE contrasts routings: the model has no routed layer (a dense model)")
        for layer in layers:
            num_experts = layer.router.num_experts
            if getattr(layer.router, "top_k", None) is None:
                raise ValueError(f"SCMoE needs token-choice routing; {type(layer.router).__name__} chooses tokens per "
                                 f"expert")
            if not 1 <= self.rank <= num_experts:
                raise ValueError(f"scmoe rank={self.rank} must lie in [1, {num_experts}] (the experts of a layer)")


def rank_routing(routing: Routing, rank: int) -> Routing:
    """Every token to its ``rank``-th expert by router probability (1 = the most probable), weight 1."""
    T = routing.num_tokens
    expert_ids_N = routing.probs_TE.argsort(dim=-1, descending=True, stable=True)[:, rank - 1]
    return Routing(token_ids_N=torch.arange(T, device=expert_ids_N.device), expert_ids_N=expert_ids_N,
                   weights_N=torch.ones(T, device=expert_ids_N.device), logits_TE=routing.logits_TE,
                   probs_TE=routing.probs_TE,
                   tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=routing.num_experts),
                   num_dropped=0, top_k=1.0)


@contextmanager
def weak_routing(model: nn.Module, rank: int) -> Iterator[None]:
    """Within the block, every routed layer of ``model`` routes by :func:`rank_routing`."""
    layers = model.moe_layers
    for layer in layers:
        layer.routing_override = lambda routing: rank_routing(routing, rank)
    try:
        yield
    finally:
        for layer in layers:
            layer.routing_override = None


def contrast_logits(strong_BV: torch.Tensor, weak_BV: torch.Tensor, *, beta: float, alpha: float) -> torch.Tensor:
    """(1 + β)·z_s − β·z_w on the plausible tokens (z_s ≥ log α + max z_s), −∞ on the others."""
    strong_BV, weak_BV = strong_BV.float(), weak_BV.float()
    plausible_BV = strong_BV >= math.log(alpha) + strong_BV.max(dim=-1, keepdim=True).values
    scores_BV = (1 + beta) * strong_BV - beta * weak_BV
    return scores_BV.masked_fill(~plausible_BV, -torch.inf)
