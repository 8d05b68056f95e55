"""Softmax top-k token-choice routing (Shazeer et al. 2017; Switch, Fedus et al. 2101.03961; Mixtral).

For each token t with router logits z_t = W_r x_t (computed in float32 whatever the model dtype):

- ``order="softmax_then_topk"``: p_t = softmax(z_t) over all E experts; select the k largest p_t,i and
  use them *unnormalised* as gate weights (Switch, Megatron ``pre_softmax``, Qwen/OLMoE with
  ``norm_topk_prob=False``). The weights of a token sum to Σ_topk p ≤ 1.
- ``order="topk_then_softmax"``: select the k largest logits and take the softmax over those k only
  (Mixtral; equal to renormalising the top-k probabilities). The weights of a token sum to 1.

Either way the weights are then multiplied by ``routed_scaling_factor`` (1 by default; DeepSeek-V3's
name). With renormalised gates the k chosen experts' outputs *average* to the FFN output, half the
size of a dense FFN of width k·expert_d_ff whose hidden units *sum*; a factor k makes the two match.

Either way ``probs_TE`` = softmax(z_t) over all experts is what balance losses see. Selection uses
p_t + b (``selection_bias_E``, zero unless the ``aux_free`` balancer moves it); weights never see b.

Input jitter (Switch §2.4): during training the router input is multiplied by U[1-ε, 1+ε] noise
(ε = ``jitter_eps``, 0 disables it); the experts still see the clean input.
"""

from __future__ import annotations

import torch

from moe.routers.base import Router
from moe.routers.scorers import LinearScorer
from moe.types import Routing

ORDERS = ("softmax_then_topk", "topk_then_softmax")


class TopKRouter(Router):
    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        order: str,  # no default: which of the two published orders is always the caller's choice
        jitter_eps: float = 0.0,
        init_std: float = 0.02,
        routed_scaling_factor: float = 1.0,
    ):
        super().__init__(scorer=LinearScorer(d_model=d_model, num_experts=num_experts, init_std=init_std),
                         d_model=d_model, num_experts=num_experts, top_k=top_k)
        if order not in ORDERS:
            raise ValueError(f"router.order={order!r} is not one of {ORDERS}")
        if not 0.0 <= jitter_eps < 1.0:
            raise ValueError(f"router.jitter_eps={jitter_eps} must lie in [0, 1)")
        if not routed_scaling_factor > 0:
            raise ValueError(f"router.routed_scaling_factor={routed_scaling_factor} must be > 0")
        self.order, self.jitter_eps = order, jitter_eps
        self.routed_scaling_factor = float(routed_scaling_factor)

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD, noise_eps=self.jitter_eps)
        probs_TE = logits_TE.softmax(dim=-1)
        expert_ids_TK = self.select_top_k(probs_TE, self.top_k)
        if self.order == "softmax_then_topk":
            weights_TK = probs_TE.gather(1, expert_ids_TK)
        else:
            weights_TK = logits_TE.gather(1, expert_ids_TK).softmax(dim=-1)
        if self.routed_scaling_factor != 1.0:
            weights_TK = weights_TK * self.routed_scaling_factor
        return self.token_choice(expert_ids_TK, weights_TK, logits_TE, probs_TE)

    def selection_score_scale(self) -> float:
        """Selection adds b to softmax probabilities, whose mean over experts is 1/E."""
        return 1.0 / self.num_experts

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, order={self.order}, jitter_eps={self.jitter_eps}, "
                f"routed_scaling_factor={self.routed_scaling_factor}")
