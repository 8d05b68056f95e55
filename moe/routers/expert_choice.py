"""Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing", 2202.09368).

With float32 logits for the T tokens of the batch:

    S = softmax(X W_g) ∈ R^{T×E}            (softmax over experts, per token)
    C = min(T, ceil(capacity_factor · T / E))
    G, I = TopK(S[:, e], C) for each expert e   (each expert picks its C best tokens)

Assignment (I[e, c], e) gets weight S[I[e, c], e]; N = E·C assignments, every expert processes exactly
C tokens (perfect balance by construction), a token may be picked by 0 to E experts. ``Routing.top_k``
= E·C/T (the average number of experts per token). ``num_dropped`` = 0: nothing is dropped by a
capacity limit, but tokens picked by *no* expert are skipped by the MoE layer (only the residual /
shared expert carries them); the metrics count them as tokens with no assignment.

``probs_TE`` = S. A selection bias would be a per-expert constant, which cannot change which tokens an
expert ranks highest, and expert choice needs no balancing: the router is built without the
``selection_bias_E`` buffer, so the ``aux_free`` balancer refuses to attach instead of doing nothing.

**Not causal.** Each expert ranks all tokens of the batch, including tokens later in the same sequence,
so in a causal language model a token's routing depends on future tokens: the training loss is
optimistic (information leaks from the future) and autoregressive decoding, which sees one token at a
time, is not equivalent to the training-time computation.
"""

from __future__ import annotations

import math
import warnings

import torch

from moe.routers.base import Router
from moe.routers.scorers import LinearScorer
from moe.types import Routing

_warned = False

CAUSALITY_WARNING = (
    "ExpertChoiceRouter ranks all tokens of the batch, including future ones: in a causal LM it leaks "
    "future information (the training loss is optimistic) and autoregressive decoding is not equivalent."
)


class ExpertChoiceRouter(Router):
    def __init__(self, *, d_model: int, num_experts: int, capacity_factor: float = 2.0, init_std: float = 0.02):
        global _warned
        if not capacity_factor > 0:
            raise ValueError(f"router.capacity_factor={capacity_factor} must be > 0")
        super().__init__(scorer=LinearScorer(d_model=d_model, num_experts=num_experts, init_std=init_std),
                         d_model=d_model, num_experts=num_experts, top_k=None, selection_bias=False)
        self.capacity_factor = float(capacity_factor)
        if not _warned:
            warnings.warn(CAUSALITY_WARNING, stacklevel=2)
            _warned = True

    def capacity(self, num_tokens: int) -> int:
        """C = min(T, ceil(capacity_factor · T / E)), at least 1 when T > 0."""
        return min(num_tokens, max(1, math.ceil(self.capacity_factor * num_tokens / self.num_experts)))

    def forward(self, x_TD: torch.Tensor) -> Routing:
        logits_TE = self.scorer(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        T, E = probs_TE.shape
        C = self.capacity(T)
        token_ids_EC = probs_TE.T.topk(C, dim=-1).indices
        token_ids_N = token_ids_EC.reshape(-1)
        expert_ids_N = torch.arange(E, device=probs_TE.device).repeat_interleave(C)
        return Routing(
            token_ids_N=token_ids_N,
            expert_ids_N=expert_ids_N,
            weights_N=probs_TE[token_ids_N, expert_ids_N],
            logits_TE=logits_TE,
            probs_TE=probs_TE,
            tokens_per_expert_E=torch.full((E,), C, dtype=torch.long, device=probs_TE.device),
            num_dropped=0,
            top_k=E * C / T if T else 0.0,
        )

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_experts={self.num_experts}, capacity_factor={self.capacity_factor}"
