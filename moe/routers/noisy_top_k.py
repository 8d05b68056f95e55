"""Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural Networks", 1701.06538, eq. 3-5).

For each token x (router computed in float32 whatever the model dtype):

    H(x)_i = (x W_g)_i + ε_i · Softplus((x W_noise)_i),     ε_i ~ N(0, 1)   (training only)
    G(x)   = Softmax(KeepTopK(H(x), k)),   KeepTopK sets all but the k largest H_i to -inf

so the gate weights of a token are the softmax over its k kept noisy logits and sum to 1. In eval mode
ε = 0 and the router is exactly softmax top-k with the softmax taken over the kept logits
(``TopKRouter(order="topk_then_softmax")``). ``W_noise`` is a second linear scorer (``noise_scorer``,
its [E, D] weight initialised to N(0, noise_init_std²), zeros by default as in the paper, so the
initial noise std is Softplus(0) = ln 2); it is trained through the gate weights only.

``probs_TE`` = softmax of the *clean* logits x W_g over all experts (what balance losses see). Selection
uses H + b (``selection_bias_E``); the weights use the unbiased H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe.routers.base import Router
from moe.routers.scorers import LinearScorer
from moe.types import Routing


class NoisyTopKRouter(Router):
    LEGACY_KEYS = {**Router.LEGACY_KEYS, "noise_weight_ED": "noise_scorer.weight_ED"}

    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        noise_init_std: float = 0.0,
        init_std: float = 0.02,
    ):
        if noise_init_std < 0:
            raise ValueError(f"router.noise_init_std={noise_init_std} must be >= 0")
        super().__init__(scorer=LinearScorer(d_model=d_model, num_experts=num_experts, init_std=init_std),
                         d_model=d_model, num_experts=num_experts, top_k=top_k)
        self.noise_init_std = noise_init_std
        self.noise_scorer = LinearScorer(d_model=d_model, num_experts=num_experts, init_std=noise_init_std)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.noise_scorer.reset_parameters()

    def noisy_logits(self, x_TD: torch.Tensor, logits_TE: torch.Tensor) -> torch.Tensor:
        """H = clean logits + ε · Softplus(x W_noise) in training; the clean logits in eval."""
        if not self.training:
            return logits_TE
        return logits_TE + torch.randn_like(logits_TE) * F.softplus(self.noise_scorer(x_TD))

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        noisy_TE = self.noisy_logits(x_TD, logits_TE)
        expert_ids_TK = self.select_top_k(noisy_TE, self.top_k)
        weights_TK = noisy_TE.gather(1, expert_ids_TK).softmax(dim=-1)
        return self.token_choice(expert_ids_TK, weights_TK, logits_TE, probs_TE)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise_init_std={self.noise_init_std}"
