"""ReLU routing (ReMoE, Wang et al. 2024, "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU
Routing", 2412.14711).

With float32 logits z_t = W x_t, the gate is

    G_t,i = ReLU(z_t,i)

and every (t, i) with G_t,i > 0 is an assignment with weight G_t,i (no top-k, no renormalisation), so
the number of experts per token varies, from 0 to E; N = the number of nonzeros. The sparsity is not
fixed by the router: the ``remoe_l1`` balancer adds λ·E·Σ_i f_i·mean_t(G_t,i) and adapts λ so that the
mean number of active experts approaches the target ``top_k``, which is what ``Routing.top_k`` reports
(the actual count per token is ``tokens_per_expert_E.sum() / T``). ``num_dropped`` = 0.

``probs_TE`` = G_t / Σ_i G_t,i, or uniform 1/E for a token with no active expert. There is no selection
bias: selection is the sign of z, steered by the L1 balancer, not a top-k, so the router drops the base
class's ``selection_bias_E`` buffer (the ``aux_free`` balancer then refuses to attach instead of
silently doing nothing).
"""

from __future__ import annotations

import torch

from moe.routers.base import Router
from moe.types import Routing


class ReLURouter(Router):
    def __init__(self, *, d_model: int, num_experts: int, top_k: int = 2, init_std: float = 0.02):
        super().__init__(d_model=d_model, num_experts=num_experts, top_k=top_k, init_std=init_std)
        del self.selection_bias_E  # nothing is selected by a score (see the module docstring)

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.linear_logits(x_TD)
        gates_TE = logits_TE.relu()
        T, E = gates_TE.shape
        token_ids_N, expert_ids_N = (gates_TE > 0).nonzero(as_tuple=True)
        totals_T1 = gates_TE.sum(dim=-1, keepdim=True)
        probs_TE = torch.where(
            totals_T1 > 0,
            gates_TE / totals_T1.clamp_min(torch.finfo(torch.float32).tiny),
            torch.full_like(gates_TE, 1.0 / E),
        )
        return Routing(
            token_ids_N=token_ids_N,
            expert_ids_N=expert_ids_N,
            weights_N=gates_TE[token_ids_N, expert_ids_N],
            logits_TE=logits_TE,
            probs_TE=probs_TE,
            tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E),
            num_dropped=0,
            top_k=float(self.top_k),
        )
