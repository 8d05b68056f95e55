"""ReMoE's load-balanced L1 regulariser with an adaptive coefficient (Wang et al., ReMoE, 2412.14711).

Meant for the ``relu`` router (ReMoE): gates G = ReLU(logits + offset), an expert is active for a
token iff its gate is nonzero, so the number of experts per token varies and sparsity is controlled by
this loss, not by a top-k. With G the dispatched gate weights (``routing.weights_N``: the nonzero
gates under the relu router), c_i the assignments dispatched to expert i, T tokens and
k = ``routing.top_k`` (the target experts per token):

    f_i = c_i / (k·T)   (detached),        L = E · Σ_i f_i · (1/T) Σ_t G_t,i

(ReMoE writes f_i = E/(kT)·c_i and L = Σ_i f_i·mean_t G_t,i — the same number.) The count weighting
makes the L1 pressure fall hardest on over-used experts. It is an L1 magnitude, not a balance ratio,
so it has no "balanced = 1" form: with balanced counts (f_i = 1/E) it equals Σ_i mean_t G_t,i, the
mean L1 norm of a token's gate vector. Scope: the micro-batch on this rank.

Adaptive coefficient λ (held in ``self.coeff``, which the model multiplies the loss by): during an
optimizer step, every training forward adds its active assignments (N = len(expert_ids_N)) and its
token count; ``on_optimizer_step()`` sums both over the data-parallel group (so all ranks keep the
same λ), measures sparsity = 1 − N/(T·E) and compares it with the target 1 − k/E:

    sparsity < 1 − k/E  (too many active experts)  →  λ ← λ · α
    otherwise                                       →  λ ← λ / α

with α = ``adapt_factor`` = 1.2 (ReMoE). Initial λ = ``coeff``, default 1e-8 (a deliberately tiny
start that the ×1.2 steps grow quickly; the paper's notes we worked from give no λ0, so this
is our choice). A step with
no training forward leaves λ unchanged. λ adapts per MoE layer (each layer has its own instance; the
ReMoE code uses one λ shared by all layers). λ is saved in the module's extra state (``<prefix>._extra_state``, a
float64 scalar tensor), so a resumed run continues from the adapted value.
"""

from __future__ import annotations

from typing import Any

import torch

from moe.balance.base import Balancer
from moe.types import BalanceContext, Routing


class ReMoEL1Loss(Balancer):
    def __init__(self, *, coeff: float = 1e-8, adapt_factor: float = 1.2):
        if not coeff > 0:
            raise ValueError(f"remoe_l1.coeff={coeff} must be > 0 (the initial λ; it adapts multiplicatively)")
        if not adapt_factor > 1:
            raise ValueError(f"remoe_l1.adapt_factor={adapt_factor} must be > 1")
        super().__init__(coeff=coeff)
        self.adapt_factor = float(adapt_factor)
        # this optimizer step's local active assignments and tokens (python floats, not buffers, which
        # DDP would overwrite with rank 0's each forward), the last target k and E, and the device
        # of the routing (the all-reduce must run there, e.g. for NCCL)
        self.step_active, self.step_tokens, self.step_k, self.step_E = 0.0, 0.0, 0.0, 0.0
        self.step_device = torch.device("cpu")

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor:
        E, T = routing.num_experts, routing.num_tokens
        if self.training:
            self.step_active += float(routing.expert_ids_N.numel())
            self.step_tokens += float(T)
            self.step_k, self.step_E, self.step_device = float(routing.top_k), float(E), routing.logits_TE.device
        f_E = routing.tokens_per_expert_E.to(routing.logits_TE.dtype) / (routing.top_k * T)
        # mean_t G_t,i from the dispatched gate weights (the nonzero G): the gate the experts saw,
        # offset included (moe/routers/relu.py), = mean_t ReLU(z_t,i) for the paper's router
        gates_E = torch.zeros(E, dtype=routing.weights_N.dtype, device=routing.weights_N.device)
        gates_E = gates_E.index_add(0, routing.expert_ids_N, routing.weights_N) / T
        return E * (f_E.detach() * gates_E.to(f_E.dtype)).sum()

    def step_stats(self) -> torch.Tensor:
        """[active assignments, tokens] since the last step."""
        return torch.tensor([self.step_active, self.step_tokens], dtype=torch.float64, device=self.step_device)

    def on_optimizer_step_from_sums(self, summed: torch.Tensor) -> None:
        self.step_active, self.step_tokens = 0.0, 0.0
        active, tokens, k, E = float(summed[0]), float(summed[1]), self.step_k, self.step_E
        if tokens <= 0:
            return
        self.coeff = self.coeff * self.adapt_factor if self.sparsity_below_target(active, tokens, k, E) \
            else self.coeff / self.adapt_factor

    @staticmethod
    def sparsity_below_target(active: float, tokens: float, k: float, E: float) -> bool:
        """True when 1 − active/(T·E) < 1 − k/E, i.e. more than k experts per token are active."""
        return 1.0 - active / (tokens * E) < 1.0 - k / E

    def get_extra_state(self) -> Any:
        # a float64 scalar tensor (not a dict), so safetensors checkpoints can hold it
        return torch.tensor(self.coeff, dtype=torch.float64)

    def set_extra_state(self, state: Any) -> None:
        self.coeff = float(state)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}, adapt_factor={self.adapt_factor}"
