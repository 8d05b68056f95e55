"""DeepSeek-V3 complementary sequence-wise balance loss (DeepSeek-V3 2412.19437, eqs. 17–20).

For each sequence b of S tokens (token t of sequence b is row b·S + t of the routing), with
s'_t = the token's scores normalised to sum to 1 over all E experts (``routing.probs_TE``: the
softmax, or the normalised sigmoid of a sigmoid router):

    f_i = E / (k·S) · Σ_t 1[i ∈ TopK_t]       (detached; k = ``routing.top_k``)
    P_i = (1/S) · Σ_t s'_t,i
    L_seq(b) = Σ_i f_i · P_i,                  L = (1/B) Σ_b L_seq(b)

Normalisation: at perfect balance every expert gets k·S/E of the sequence's assignments, so f_i = 1
and P_i = 1/E, and L = Σ_i 1/E = 1.0 exactly — the project's "balanced = 1" convention holds with
V3's own f (V3 puts the factor E into f rather than in front of the sum). The indicator counts the
assignments actually dispatched (``expert_ids_N``; V3 drops no tokens, so these are its TopK).

This is algebraically the same loss as ``SwitchAuxLoss(scope="sequence")`` (E·Σ_i c_i/(k·S)·P_i per
sequence) for every router, softmax or sigmoid, since both read the same ``probs_TE``; the test
checks that they coincide for softmax probabilities. It is kept as its own balancer because its
default coefficient is V3's α = 1e-4 (a weak complement to aux-free balancing), not 1e-2.
"""

from __future__ import annotations

import torch

from moe.balance.base import Balancer
from moe.types import BalanceContext, Routing


class SeqAuxLoss(Balancer):
    def __init__(self, *, coeff: float = 1e-4):
        super().__init__(coeff=coeff)

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor:
        E = routing.num_experts
        B, S = ctx.batch_size, ctx.seq_len
        if B * S != routing.num_tokens:
            raise ValueError(f"seq_aux: batch_size·seq_len = {B}·{S} != tokens {routing.num_tokens}")
        sequence_N = torch.div(routing.token_ids_N, S, rounding_mode="floor")
        hits_BE = torch.bincount(sequence_N * E + routing.expert_ids_N, minlength=B * E).view(B, E)
        f_BE = hits_BE.to(routing.probs_TE.dtype) * (E / (routing.top_k * S))
        P_BE = routing.probs_TE.view(B, S, E).mean(dim=1)
        return (f_BE.detach() * P_BE).sum(dim=-1).mean()
