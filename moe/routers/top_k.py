"""Softmax top-k token-choice routing (Shazeer et al. 2017; Switch, Fedus et al. 2101.03961; Mixtral).

For each token t with router logits z_t = W_r x_t (computed in float32 whatever the model dtype):

- ``order="softmax_then_topk"``: p_t = softmax(z_t) over all E experts; select the k largest p_t,i and
  use them *unnormalised* as gate weights (Switch, Megatron ``pre_softmax``, Qwen/OLMoE with
  ``norm_topk_prob=False``). The weights of a token sum to Σ_topk p ≤ 1.
- ``order="topk_then_softmax"``: select the k largest logits and take the softmax over those k only
  (Mixtral; equal to renormalising the top-k probabilities). The weights of a token sum to 1.

Either way ``probs_TE`` = softmax(z_t) over all experts is what balance losses see.

Input jitter (Switch §2.4): during training the router input is multiplied by U[1-ε, 1+ε] noise
(ε = ``jitter_eps``, 0 disables it); the experts still see the clean input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe.types import Routing

ORDERS = ("softmax_then_topk", "topk_then_softmax")


class TopKRouter(nn.Module):
    """Linear router + softmax top-k selection. Returns a :class:`moe.types.Routing`."""

    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        order: str = "softmax_then_topk",
        jitter_eps: float = 0.0,
        init_std: float = 0.02,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got num_experts={num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f"router.top_k={top_k} must lie in [1, num_experts={num_experts}]"
                + (f": top_k={top_k} > num_experts={num_experts}" if top_k > num_experts else "")
            )
        if order not in ORDERS:
            raise ValueError(f"router.order={order!r} is not one of {ORDERS}")
        if not 0.0 <= jitter_eps < 1.0:
            raise ValueError(f"router.jitter_eps={jitter_eps} must lie in [0, 1)")
        self.num_experts = num_experts
        self.top_k = top_k
        self.order = order
        self.jitter_eps = jitter_eps
        self.init_std = init_std
        # fp32 master weight: routing decisions are precision-sensitive (Switch §2.4, "selective precision").
        self.weight_ED = nn.Parameter(torch.empty(num_experts, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight_ED, std=self.init_std)

    def router_logits(self, x_TD: torch.Tensor) -> torch.Tensor:
        """float32 logits [T, E], autocast disabled so a bf16 model still routes in fp32."""
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            x_TD = x_TD.float()
            if self.training and self.jitter_eps > 0:
                noise_TD = torch.empty_like(x_TD).uniform_(1.0 - self.jitter_eps, 1.0 + self.jitter_eps)
                x_TD = x_TD * noise_TD
            return F.linear(x_TD, self.weight_ED.float())

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.router_logits(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        T, k = x_TD.shape[0], self.top_k
        if self.order == "softmax_then_topk":
            weights_TK, expert_ids_TK = probs_TE.topk(k, dim=-1)
        else:
            top_logits_TK, expert_ids_TK = logits_TE.topk(k, dim=-1)
            weights_TK = top_logits_TK.softmax(dim=-1)
        expert_ids_N = expert_ids_TK.reshape(-1)
        return Routing(
            token_ids_N=torch.arange(T, device=x_TD.device).repeat_interleave(k),
            expert_ids_N=expert_ids_N,
            weights_N=weights_TK.reshape(-1),
            logits_TE=logits_TE,
            probs_TE=probs_TE,
            tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=self.num_experts),
            num_dropped=0,
            top_k=float(k),
        )

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, order={self.order}, "
            f"jitter_eps={self.jitter_eps}"
        )
