"""Routing statistics, logged per MoE layer at every log step and at eval.

From expert loads (counts of dispatched assignments per expert, summed over a window):

- MaxVio (Wang et al. 2408.15664, eq. 4): (max_i c_i − mean_i c_i) / mean_i c_i. 0 when balanced;
  E − 1 when one expert takes everything. Over one batch it is MaxVio_batch; over a whole validation
  set, MaxVio_global.
- load entropy: H(c/Σc) / log E, the entropy of the load distribution normalised to [0, 1]
  (1 = perfectly even, 0 = one expert takes all).
- dead experts: experts that received no assignment in the window.

From one forward's scores (``routing_stats``, averaged over micro-steps by the caller):

- router entropy: mean_t H(p_t) / log E, the normalised entropy of each token's score distribution
  (1 = undecided, 0 = one-hot).
- top-1/top-2 margin: mean_t (p_t,(1) − p_t,(2)), how decisive the top choice is.
- TopK score sum: mean_t Σ_{i ∈ top-k(p_t)} p_t,i (Qiu et al. 2501.11873 §specialisation; k/E for a
  uniform router, 1 for a fully confident one).
- drop rate: dropped / (dispatched + dropped) assignments; unrouted: share of tokens with no expert.
- experts per token: dispatched assignments / T (k for dropless top-k; it varies under ReLU routing).
"""

from __future__ import annotations

import math

import torch

from moe.types import Routing


def load_stats(tokens_per_expert_E: torch.Tensor) -> dict[str, float]:
    """MaxVio, normalised load entropy and dead-expert count of one load vector [E]."""
    load_E = tokens_per_expert_E.detach().double().cpu()
    E = load_E.numel()
    total = float(load_E.sum())
    if total == 0:
        return {"max_vio": 0.0, "load_entropy": 0.0, "dead_experts": float(E)}
    share_E = load_E / total
    entropy = float(-(share_E[share_E > 0] * share_E[share_E > 0].log()).sum())
    mean = total / E
    return {
        "max_vio": (float(load_E.max()) - mean) / mean,
        "load_entropy": entropy / math.log(E) if E > 1 else 1.0,
        "dead_experts": float((load_E == 0).sum()),
    }


@torch.no_grad()
def routing_stats(routing: Routing) -> dict[str, float]:
    """Score-based statistics of one forward (see the module docstring)."""
    probs_TE = routing.probs_TE.detach().float()
    T, E = probs_TE.shape
    if T == 0:
        return {}
    entropy_T = -(probs_TE * probs_TE.clamp_min(1e-12).log()).sum(-1)
    k = min(E, max(1, round(routing.top_k)))
    top_TK = probs_TE.topk(min(E, max(k, 2)), dim=-1).values
    dispatched, dropped = int(routing.expert_ids_N.numel()), int(routing.num_dropped)
    routed_T = torch.zeros(T, dtype=torch.bool, device=probs_TE.device)
    routed_T[routing.token_ids_N] = True
    return {
        "router_entropy": float(entropy_T.mean()) / math.log(E) if E > 1 else 0.0,
        "top1_top2_margin": float((top_TK[:, 0] - top_TK[:, 1]).mean()) if E > 1 else 1.0,
        "topk_score_sum": float(top_TK[:, :k].sum(-1).mean()),
        "drop_rate": dropped / max(1, dispatched + dropped),
        "unrouted_tokens": 1.0 - float(routed_T.float().mean()),
        "experts_per_token": dispatched / T,
    }
