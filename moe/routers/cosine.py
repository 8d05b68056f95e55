"""Cosine routing (X-MoE, Chi et al. 2022, "On the Representation Collapse of Sparse Mixture of
Experts", 2204.09179).

Tokens are projected to a low dimension before being scored against expert embeddings:

    h_t        = W_p x_t                         W_p: [d_proj, D] (``proj_PD``), d_proj = 16 by default
    z_t,i      = cos(h_t, e_i) / τ = (h_t · e_i) / (‖h_t‖ ‖e_i‖ τ)      e: [E, d_proj] (``expert_embed_EP``)

τ is learnable. It is stored as ``log_temperature`` (initialised to log 0.07) and used as
τ = exp(clamp(log_temperature, log 0.01, log 1)), i.e. τ ∈ [0.01, 1] (no gradient reaches it while it
sits outside that band). The expert embeddings start orthogonal (``nn.init.orthogonal_``), W_p from
N(0, init_std²).

``perturbed: true`` is LibMoE's perturbed cosine: a constant c = ``perturb_constant`` (default 0.01) is
added to both norms, z_t,i = (h_t · e_i) / ((‖h_t‖ + c)(‖e_i‖ + c) τ), which bounds the gradient near
zero-norm vectors. Unperturbed, the norms are clamped below at 1e-6 only (F.normalize).

The rest is softmax top-k as in ``TopKRouter(order="softmax_then_topk")``: p_t = softmax(z_t),
selection is the top-k of p_t + b (b = ``selection_bias_E``, selection only) and the gate weights are
the unnormalised p_t,i of the selected experts. ``probs_TE`` = p. Everything runs in float32.
The parameters live in the router's ``scorer`` (:class:`moe.routers.scorers.CosineScorer`).
"""

from __future__ import annotations

import torch

from moe.routers.base import Router
from moe.routers.scorers import CosineScorer
from moe.types import Routing


class CosineRouter(Router):
    LEGACY_KEYS = {name: f"scorer.{name}" for name in ("proj_PD", "expert_embed_EP", "log_temperature")}

    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        d_proj: int = 16,
        init_temperature: float = 0.07,
        perturbed: bool = False,
        perturb_constant: float = 0.01,
        init_std: float = 0.02,
    ):
        scorer = CosineScorer(d_model=d_model, num_experts=num_experts, d_proj=d_proj,
                              init_temperature=init_temperature, perturbed=perturbed,
                              perturb_constant=perturb_constant, init_std=init_std)
        super().__init__(scorer=scorer, d_model=d_model, num_experts=num_experts, top_k=top_k)

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        expert_ids_TK = self.select_top_k(probs_TE, self.top_k)
        weights_TK = probs_TE.gather(1, expert_ids_TK)
        return self.token_choice(expert_ids_TK, weights_TK, logits_TE, probs_TE)
