"""Importance loss (Shazeer et al. 2017, "Outrageously Large Neural Networks", eq. 6), in the
project's "balanced = 1" form.

With g_t,i the gate weight token t gives expert i (``routing.weights_N`` scattered to experts; 0 when
i is not among the token's experts), the importance of expert i over the micro-batch is

    I_i = Σ_t g_t,i,      CV(I)² = Var(I) / Mean(I)²      (population variance over the E experts).

Shazeer's loss is CV(I)², whose natural zero is balance. This balancer returns

    L = 1 + CV(I)² = E · Σ_i q_i²,      q_i = I_i / Σ_j I_j       (the share of gate mass on expert i)

(because Var = Mean(I²) − Mean², 1 + Var/Mean² = Mean(I²)/Mean² = E·Σ I_i² / (Σ I_j)²), so a router
whose experts receive equal gate mass scores exactly 1.0 and one that puts all gate mass on one expert
scores E — the same range as ``switch_aux`` (it is the Switch form E·Σ f_i P_i with f = P = q, both
carrying the gradient). The gradient equals that of Shazeer's CV² (the 1 is a constant). Unlike the
count-based losses it only sees the gates of the selected experts, so the router is pushed only
through the weights of the chosen experts. Scope: the micro-batch on this rank.
"""

from __future__ import annotations

import torch

from moe.balance.base import Balancer
from moe.types import BalanceContext, Routing


class ImportanceLoss(Balancer):
    def __init__(self, *, coeff: float = 0.01):
        super().__init__(coeff=coeff)

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor:
        E = routing.num_experts
        weights_N = routing.weights_N.float()
        importance_E = weights_N.new_zeros(E).index_add(0, routing.expert_ids_N, weights_N)
        total = importance_E.sum()
        # E·Σ I² / (Σ I)²; the clamp only matters when every gate is exactly 0 (then L = 0)
        return E * importance_E.square().sum() / total.square().clamp_min(torch.finfo(total.dtype).tiny)
