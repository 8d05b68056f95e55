"""CMoE's training-free analytic router (Pei et al. 2502.04416, step 6).

Expert e is scored by one representative neuron r_e of its cluster, with stored L2-normalised rows
û_e = up_{r_e}/‖up_{r_e}‖ and ĝ_e = gate_{r_e}/‖gate_{r_e}‖ (the router's ``scorer``, a
:class:`moe.routers.scorers.RepresentativeScorer`: buffers ``up_ED`` / ``gate_ED``, fixed, no gradient,
saved in checkpoints):

    score_e(x) = |(x̂·û_e) · SiLU(x̂·ĝ_e)|,    s = softmax_e(score),    chosen = TopK(s + b),
    w_e = 1 + s_e·u_e  for the chosen experts,

with x̂ = x/‖x‖ (the calibration activations that defined the clusters are computed from x̂ too; the
formula as published leaves x unnormalised — a documented choice) and b = ``selection_bias_E``
(selection only, moved by ``balance=aux_free``). u is the only learned parameter, a [E] vector
initialised to zero, so at init the chosen experts are summed unweighted: with every expert chosen a
carved layer is exactly the dense FFN. Gradients reach u (and nothing else) through the weights. All
in float32 with autocast off. ``probs_TE`` = s, ``logits_TE`` = the scores. Built from scratch the
representative rows are random unit vectors; ``init=upcycle init.method=carve`` fills them
(moe/upcycle/carve.py). Note w_e < 0 is possible once u_e < −1/s_e.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.routers.base import Router
from moe.routers.scorers import RepresentativeScorer
from moe.types import Routing


class CMoERouter(Router):
    LEGACY_KEYS = {"gate_ED": "scorer.gate_ED", "up_ED": "scorer.up_ED"}

    def __init__(self, *, d_model: int, num_experts: int, top_k: int = 2):
        super().__init__(scorer=RepresentativeScorer(d_model=d_model, num_experts=num_experts),
                         d_model=d_model, num_experts=num_experts, top_k=top_k)
        self.u_E = nn.Parameter(torch.zeros(num_experts))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.u_E.zero_()

    def forward(self, x_TD: torch.Tensor) -> Routing:
        scores_TE = self.scorer(x_TD)
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            probs_TE = scores_TE.softmax(dim=-1)
            expert_ids_TK = self.select_top_k(probs_TE, self.top_k)
            weights_TK = 1.0 + probs_TE.gather(1, expert_ids_TK) * self.u_E.float()[expert_ids_TK]
        return self.token_choice(expert_ids_TK, weights_TK, scores_TE, probs_TE)
