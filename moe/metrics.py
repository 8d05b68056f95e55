"""Routing statistics computed from expert loads (counts of dispatched assignments per expert).

- MaxVio (Wang et al. 2408.15664, eq. 4): (max_i c_i − mean_i c_i) / mean_i c_i. 0 when balanced;
  E − 1 when one expert takes everything. Over one batch it is MaxVio_batch; over a whole validation
  set, MaxVio_global.
- load entropy: H(c/Σc) / log E, the entropy of the load distribution normalised to [0, 1]
  (1 = perfectly even, 0 = one expert takes all).
- dead experts: experts that received no assignment in the window.
"""

from __future__ import annotations

import math

import torch


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
