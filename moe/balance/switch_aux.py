"""Switch-Transformer load-balancing loss (Fedus et al. 2101.03961, eq. 4; Shazeer et al. 2017).

    L = E · Σ_i f_i · P_i,     f_i = c_i / (k·T)  (detached),     P_i = (1/T) Σ_t p_t,i

with c_i the assignments dispatched to expert i, p_t the softmax over all E experts (``probs_TE``) and
T the tokens the scope covers. Normalisation: a perfectly balanced router (f_i = P_i = 1/E) scores
exactly 1.0 before the coefficient, whatever E and k (DESIGN.md). Conversions: HF
``load_balancing_loss_func`` reports k·L (balanced = k); Switch's top-1 loss is L with k = 1.

Scopes (Qiu et al. 2501.11873 call the micro scope "micro-batch LBL"):

- ``micro``: f and P over all T tokens of this forward (the micro-batch on this rank) — the default
  of Megatron, DeepSpeed-MoE, Tutel and MegaBlocks.
- ``sequence``: the loss of each sequence (f, P over its S tokens), averaged over the B sequences.

The ``global`` scope (counts summed over gradient-accumulation steps and data-parallel ranks) needs
per-step buffers and is not implemented here yet.
"""

from __future__ import annotations

import torch

from moe.balance.base import Balancer
from moe.types import BalanceContext, Routing

SCOPES = ("micro", "sequence")


class SwitchAuxLoss(Balancer):
    def __init__(self, *, coeff: float = 0.01, scope: str = "micro"):
        super().__init__(coeff=coeff)
        if scope not in SCOPES:
            raise ValueError(f"switch_aux.scope={scope!r} is not one of {SCOPES}")
        self.scope = scope

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor:
        E = routing.num_experts
        if self.scope == "micro":
            counts_1E = routing.tokens_per_expert_E[None].float()
            probs_1TE = routing.probs_TE[None]
        else:
            B, S = ctx.batch_size, ctx.seq_len
            sequence_N = torch.div(routing.token_ids_N, S, rounding_mode="floor")
            counts_1E = torch.bincount(sequence_N * E + routing.expert_ids_N, minlength=B * E)
            counts_1E = counts_1E.view(B, E).float()
            probs_1TE = routing.probs_TE.view(B, S, E)
        # the leading dim is the scope's groups (1 for micro, B for sequence); T = tokens per group
        tokens_per_group = probs_1TE.shape[1]
        f_GE = counts_1E / (routing.top_k * tokens_per_group)
        P_GE = probs_1TE.mean(dim=1)
        return E * (f_GE.detach() * P_GE).sum(dim=-1).mean()

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}, scope={self.scope}"
