"""ReLU routing (ReMoE, Wang et al. 2024, "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU
Routing", 2412.14711).

With float32 logits z_t = W x_t, the gate is

    G_t,i = ReLU(z_t,i + b_i)          (b = 0 in the paper; the offset b is described below)

and every (t, i) with G_t,i > 0 is an assignment with weight G_t,i (no top-k, no renormalisation), so
the number of experts per token varies, from 0 to E; N = the number of nonzeros. The sparsity is not
fixed by the router: the ``remoe_l1`` balancer adds λ·E·Σ_i f_i·mean_t(G_t,i) and adapts λ so that the
mean number of active experts approaches the target ``top_k``, which is what ``Routing.top_k`` reports
(the actual count per token is ``tokens_per_expert_E.sum() / T``). ``num_dropped`` = 0.

``probs_TE`` = G_t / Σ_i G_t,i, or uniform 1/E for a token with no active expert.

Departure from the paper: an offset b = ``selection_bias_E`` (a buffer) is added *inside* the ReLU,
G_t,i = ReLU(z_t,i + b_i). It starts at the sparsity target: with unit-RMS router inputs (the block's
RMSNorm output) z_t,i ~ N(0, σ²), σ = init_std·√d_model, so b_0 = −σ·Φ⁻¹(1 − k/E) makes P(z + b_0 > 0)
= k/E and a token starts with about k experts (``start_at_target=False``: b_0 = 0, the paper's router,
about E/2 experts per token until the L1 coefficient has grown). For ReLU routing the gate
value is both the selection and the weight, so a selection-only bias (as in the top-k routers) could
not switch a gate back on: a gate with z < 0 gets no gradient from any loss. The ``aux_free``
balancer with ``target=top_k`` moves b by u·sign(k·T/E − c_i) once per optimizer step, which holds
the experts per token near k and revives dead gates (see configs/router_arm/relu.yaml for why a
short CPU run needs it: the LM loss itself switches the deeper layers' gates off in the first ~50
steps, long before the adaptive L1 coefficient has grown to matter).
"""

from __future__ import annotations

import torch

from moe.routers.base import Router
from moe.routers.scorers import LinearScorer
from moe.types import Routing


class ReLURouter(Router):
    def __init__(self, *, d_model: int, num_experts: int, top_k: int = 2, init_std: float = 0.02,
                 start_at_target: bool = True):
        super().__init__(scorer=LinearScorer(d_model=d_model, num_experts=num_experts, init_std=init_std),
                         d_model=d_model, num_experts=num_experts, top_k=top_k)
        self.init_std, self.start_at_target = init_std, bool(start_at_target)
        self.reset_offset()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.reset_offset()

    def reset_offset(self) -> None:
        """b_0 = −σ·Φ⁻¹(1 − k/E), σ = init_std·√d_model (0 for the paper's router or when k = E)."""
        self.selection_bias_E.zero_()
        if self.start_at_target and self.top_k < self.num_experts:
            quantile = torch.special.ndtri(torch.tensor(1.0 - self.top_k / self.num_experts, dtype=torch.float64))
            self.selection_bias_E.fill_(-self.init_std * self.d_model ** 0.5 * float(quantile))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the offset existed have none: they load as the zero offset they meant
        state_dict.setdefault(prefix + "selection_bias_E", torch.zeros_like(self.selection_bias_E))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD)
        gates_TE = (logits_TE + self.selection_bias_E).relu()
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
