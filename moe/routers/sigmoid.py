"""Sigmoid gating with group-limited top-k (DeepSeek-V3, 2412.19437 §2.1.2; aux-loss-free bias 2408.15664).

For token t with float32 logits u_t = W x_t:

    s_t,i = σ(u_t,i)                                     affinity of expert i
    c_t,i = s_t,i + b_i                                  selection score (b = ``selection_bias_E``)

Group-limited selection (``num_groups`` = G must divide E; ``topk_groups`` groups kept): the E experts
form G consecutive groups of E/G; a group's score is the sum of the top-2 c_t,i inside it (the top-1
when a group holds one expert); the ``topk_groups`` best groups are kept, the experts of the other
groups are masked to -inf, and the k largest c_t,i among the kept experts are selected. G = 1 is plain
sigmoid top-k. The gate weights use the *unbiased* s:

    g_t,i = s_t,i / Σ_{j∈sel} s_t,j  (``normalize: true``)   or   s_t,i   (``normalize: false``)
    g_t,i ← g_t,i · ``routed_scaling_factor``                (2.5 in DeepSeek-V3)

``probs_TE`` = s_t,i / Σ_j s_t,j (the sigmoid scores normalised over all experts).
"""

from __future__ import annotations

import torch

from moe.routers.base import Router
from moe.routers.scorers import LinearScorer
from moe.types import Routing


class SigmoidRouter(Router):
    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        num_groups: int = 1,
        topk_groups: int = 1,
        normalize: bool = True,
        routed_scaling_factor: float = 1.0,
        init_std: float = 0.02,
    ):
        super().__init__(scorer=LinearScorer(d_model=d_model, num_experts=num_experts, init_std=init_std),
                         d_model=d_model, num_experts=num_experts, top_k=top_k)
        if num_groups < 1 or num_experts % num_groups:
            raise ValueError(f"router.num_groups={num_groups} must divide num_experts={num_experts}")
        if not 1 <= topk_groups <= num_groups:
            raise ValueError(f"router.topk_groups={topk_groups} must lie in [1, num_groups={num_groups}]")
        if topk_groups * (num_experts // num_groups) < top_k:
            raise ValueError(
                f"router.topk_groups={topk_groups} keeps topk_groups·(num_experts/num_groups)="
                f"{topk_groups * (num_experts // num_groups)} experts, fewer than router.top_k={top_k}"
            )
        if not routed_scaling_factor > 0:
            raise ValueError(f"router.routed_scaling_factor={routed_scaling_factor} must be > 0")
        self.num_groups, self.topk_groups = num_groups, topk_groups
        self.normalize, self.routed_scaling_factor = bool(normalize), float(routed_scaling_factor)

    def select_experts(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """expert_ids [T, k]: group-limited top-k of ``scores + selection_bias`` (never used as weights)."""
        sel_TE = scores_TE + self.selection_bias_E
        if self.num_groups > 1 and self.topk_groups < self.num_groups:
            T, E = sel_TE.shape
            sel_TGX = sel_TE.view(T, self.num_groups, E // self.num_groups)
            group_scores_TG = sel_TGX.topk(min(2, sel_TGX.shape[-1]), dim=-1).values.sum(-1)
            kept_TG = group_scores_TG.topk(self.topk_groups, dim=-1).indices
            keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(1, kept_TG, True)
            sel_TE = sel_TGX.masked_fill(~keep_TG.unsqueeze(-1), float("-inf")).view(T, E)
        return sel_TE.topk(self.top_k, dim=-1).indices

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD)
        scores_TE = logits_TE.sigmoid()
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        expert_ids_TK = self.select_experts(scores_TE)
        weights_TK = scores_TE.gather(1, expert_ids_TK)
        if self.normalize:
            weights_TK = weights_TK / (weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
        weights_TK = weights_TK * self.routed_scaling_factor
        return self.token_choice(expert_ids_TK, weights_TK, logits_TE, probs_TE)

    def selection_score_scale(self) -> float:
        """Selection adds b to sigmoid affinities, each in (0, 1)."""
        return 1.0

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_groups={self.num_groups}, topk_groups={self.topk_groups}, "
            f"normalize={self.normalize}, routed_scaling_factor={self.routed_scaling_factor}"
        )
