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
The base class's [E, D] ``weight_ED`` is not used and is removed; the parameters live on this router.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moe.routers.base import Router
from moe.types import Routing

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


class CosineRouter(Router):
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
        if d_proj < 1:
            raise ValueError(f"router.d_proj={d_proj} must be >= 1")
        if not MIN_TEMPERATURE <= init_temperature <= MAX_TEMPERATURE:
            raise ValueError(
                f"router.init_temperature={init_temperature} must lie in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]"
            )
        if perturb_constant <= 0:
            raise ValueError(f"router.perturb_constant={perturb_constant} must be > 0")
        super().__init__(d_model=d_model, num_experts=num_experts, top_k=top_k, init_std=init_std)
        del self.weight_ED  # the cosine scorer replaces the base linear scorer
        self.d_proj, self.init_temperature = d_proj, init_temperature
        self.perturbed, self.perturb_constant = bool(perturbed), perturb_constant
        self.proj_PD = nn.Parameter(torch.empty(d_proj, d_model))
        self.expert_embed_EP = nn.Parameter(torch.empty(num_experts, d_proj))
        self.log_temperature = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not hasattr(self, "proj_PD"):  # called by the base constructor before our parameters exist
            return
        nn.init.normal_(self.proj_PD, std=self.init_std)
        nn.init.orthogonal_(self.expert_embed_EP)
        with torch.no_grad():
            self.log_temperature.fill_(math.log(self.init_temperature))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.clamp(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)).exp()

    def cosine_logits(self, x_TD: torch.Tensor) -> torch.Tensor:
        """float32 z = cos(W_p x, e) / τ, [T, E], with autocast off."""
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            h_TP = F.linear(x_TD.float(), self.proj_PD.float())
            e_EP = self.expert_embed_EP.float()
            if self.perturbed:
                c = self.perturb_constant
                cos_TE = (h_TP @ e_EP.T) / ((h_TP.norm(dim=-1, keepdim=True) + c) * (e_EP.norm(dim=-1) + c))
            else:
                cos_TE = F.normalize(h_TP, dim=-1, eps=1e-6) @ F.normalize(e_EP, dim=-1, eps=1e-6).T
            return cos_TE / self.temperature.float()

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.cosine_logits(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        expert_ids_TK = self.select_top_k(probs_TE, self.top_k)
        weights_TK = probs_TE.gather(1, expert_ids_TK)
        return self.token_choice(expert_ids_TK, weights_TK, logits_TE, probs_TE)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_proj={self.d_proj}, perturbed={self.perturbed}, "
            f"perturb_constant={self.perturb_constant}"
        )
