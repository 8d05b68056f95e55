"""Uniform random top-k routing: a baseline with no learned router (e.g. OLMo-core's
``uniform_expert_assignment``; the "random routing" control of Roller et al. 2021).

Each token gets k distinct experts uniformly at random, with weight 1/k each:

    expert_ids_t = the indices of the k largest of u_t,1..u_t,E,   u ~ U[0, 1) i.i.d.

(the top-k of i.i.d. continuous noise is a uniformly random k-subset). In training the noise comes
from the global torch RNG, so an exact resume that restores the RNG state reproduces the routing; in
eval mode it comes from a ``torch.Generator`` seeded with ``seed`` at each forward, so evaluation is
deterministic. ``logits_TE`` are zeros and ``probs_TE`` uniform 1/E; there are no parameters and no
``selection_bias_E`` (nothing is selected by a score).
"""

from __future__ import annotations

import torch
from torch import nn

from moe.routers.base import check_router_sizes
from moe.types import Routing


class RandomRouter(nn.Module):
    def __init__(self, *, d_model: int, num_experts: int, top_k: int = 2, seed: int = 0):
        super().__init__()
        check_router_sizes(d_model=d_model, num_experts=num_experts, top_k=top_k)
        self.d_model, self.num_experts, self.top_k, self.seed = d_model, num_experts, top_k, seed

    def forward(self, x_TD: torch.Tensor) -> Routing:
        T, E, k, device = x_TD.shape[0], self.num_experts, self.top_k, x_TD.device
        if self.training:
            noise_TE = torch.rand(T, E, device=device)
        else:
            generator = torch.Generator(device=device).manual_seed(self.seed)
            noise_TE = torch.rand(T, E, device=device, generator=generator)
        expert_ids_N = noise_TE.topk(k, dim=-1).indices.reshape(-1)
        return Routing(
            token_ids_N=torch.arange(T, device=device).repeat_interleave(k),
            expert_ids_N=expert_ids_N,
            weights_N=torch.full((T * k,), 1.0 / k, dtype=torch.float32, device=device),
            logits_TE=torch.zeros(T, E, dtype=torch.float32, device=device),
            probs_TE=torch.full((T, E), 1.0 / E, dtype=torch.float32, device=device),
            tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E),
            num_dropped=0,
            top_k=float(k),
        )

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}, seed={self.seed}"
