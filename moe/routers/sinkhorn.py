"""Sinkhorn-balanced token choice (S-BASE, Clark et al. 2022, "Unified Scaling Laws for Routed Language
Models", 2202.01169; Megatron-LM ``sinkhorn`` router).

With float32 logits z ∈ R^{T×E}, the selection matrix is the Sinkhorn normalisation of exp(z),
computed without gradient and in log space (L ← z, then alternately)

    L_t,i ← L_t,i − logsumexp_j L_t,j                   (rows of exp(L) sum to 1)
    L_t,i ← L_t,i − logsumexp_s L_s,i + log(T / E)      (columns of exp(L) sum to T/E)

for ``num_iters`` iterations, stopping early once every row sum is within ``tol`` of 1 (tol = 0 runs all
iterations). P = exp(L) ends with exact columns and rows ≈ 1. Each token selects the top-k of P + b
(b = ``selection_bias_E``, selection only). The gate weights come from the ORIGINAL softmax
p = softmax(z) at the selected experts (renormalised over the k when ``normalize: true``; default false,
Switch-like for k = 1), so the gradient flows through p, never through the Sinkhorn iterations.
``probs_TE`` = p.

In eval mode the selection is the plain top-k of p + b unless ``balance_in_eval: true`` (Megatron also
selects greedily at inference). Note that the column normalisation couples all tokens of the batch, so
in training a token's *selection* depends on the other (also future) tokens of the batch.
"""

from __future__ import annotations

import math

import torch

from moe.routers.base import Router
from moe.routers.scorers import LinearScorer
from moe.types import Routing


def sinkhorn_log(logits_TE: torch.Tensor, num_iters: int, tol: float = 0.0) -> torch.Tensor:
    """log P, float32 [T, E]: Sinkhorn-normalised exp(logits) with rows ≈ 1 and columns = T/E."""
    T, E = logits_TE.shape
    log_col_target = math.log(T / E)
    L_TE = logits_TE.float()
    for _ in range(num_iters):
        L_TE = L_TE - L_TE.logsumexp(dim=1, keepdim=True)
        L_TE = L_TE - L_TE.logsumexp(dim=0, keepdim=True) + log_col_target
        if tol > 0 and float((L_TE.logsumexp(dim=1).exp() - 1).abs().max()) < tol:
            break
    return L_TE


class SinkhornRouter(Router):
    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        top_k: int = 1,
        num_iters: int = 8,
        tol: float = 1e-4,
        normalize: bool = False,
        balance_in_eval: bool = False,
        init_std: float = 0.02,
    ):
        super().__init__(scorer=LinearScorer(d_model=d_model, num_experts=num_experts, init_std=init_std),
                         d_model=d_model, num_experts=num_experts, top_k=top_k)
        if num_iters < 1:
            raise ValueError(f"router.num_iters={num_iters} must be >= 1")
        if tol < 0:
            raise ValueError(f"router.tol={tol} must be >= 0")
        self.num_iters, self.tol = num_iters, tol
        self.normalize, self.balance_in_eval = bool(normalize), bool(balance_in_eval)

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        if (self.training or self.balance_in_eval) and logits_TE.shape[0] > 0:
            with torch.no_grad():
                balanced_TE = sinkhorn_log(logits_TE.detach(), self.num_iters, self.tol).exp()
            expert_ids_TK = self.select_top_k(balanced_TE, self.top_k)
        else:
            expert_ids_TK = self.select_top_k(probs_TE.detach(), self.top_k)
        weights_TK = probs_TE.gather(1, expert_ids_TK)
        if self.normalize:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        return self.token_choice(expert_ids_TK, weights_TK, logits_TE, probs_TE)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_iters={self.num_iters}, tol={self.tol}, "
            f"normalize={self.normalize}, balance_in_eval={self.balance_in_eval}"
        )
