"""Router z-loss (ST-MoE, Zoph et al. 2202.08906, eq. 5).

    L_z = (1/T) Σ_t ( log Σ_j exp(z_t,j) )²

It penalises large router logits, which keeps the float32 softmax of the router stable. ST-MoE uses
coefficient 1e-3. Unlike the balance losses it has no "balanced = 1" normalisation: its natural zero
is all-zero logits with E = 1, and with all-zero logits over E experts it equals (log E)².
"""

from __future__ import annotations

import torch

from moe.balance.base import Balancer
from moe.types import BalanceContext, Routing


class ZLoss(Balancer):
    def __init__(self, *, coeff: float = 1e-3):
        super().__init__(coeff=coeff)

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor:
        return torch.logsumexp(routing.logits_TE, dim=-1).square().mean()
