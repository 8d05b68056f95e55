"""What every learned router shares: the float32 linear scorer, the selection-only bias, and the
assembly of a token-choice :class:`moe.types.Routing` from per-token top-k choices.

The selection bias ``selection_bias_E`` (a buffer, zero at init, no gradient) is added to the scores
used to *choose* experts, never to the gate weights (DeepSeek-V3's auxiliary-loss-free balancing,
Wang et al. 2408.15664). The ``aux_free`` balancer updates it in place once per optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe.types import Routing


def check_router_sizes(*, d_model: int, num_experts: int, top_k: int | None = None) -> None:
    """Build-time checks shared by all routers; the messages name the config field."""
    if d_model < 1:
        raise ValueError(f"d_model must be >= 1, got d_model={d_model}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got num_experts={num_experts}")
    if top_k is not None and not 1 <= top_k <= num_experts:
        detail = f": top_k={top_k} > num_experts={num_experts}" if top_k > num_experts else ""
        raise ValueError(f"router.top_k={top_k} must lie in [1, num_experts={num_experts}]{detail}")


class Router(nn.Module):
    """Base of the learned routers: ``weight_ED`` (fp32 master weight) and ``selection_bias_E``."""

    def __init__(self, *, d_model: int, num_experts: int, top_k: int | None, init_std: float = 0.02):
        super().__init__()
        check_router_sizes(d_model=d_model, num_experts=num_experts, top_k=top_k)
        self.d_model, self.num_experts, self.top_k, self.init_std = d_model, num_experts, top_k, init_std
        # fp32 master weight: routing decisions are precision-sensitive (Switch §2.4, "selective precision")
        self.weight_ED = nn.Parameter(torch.empty(num_experts, d_model))
        self.register_buffer("selection_bias_E", torch.zeros(num_experts))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight_ED, std=self.init_std)

    def selection_score_scale(self) -> float | None:
        """The size of the scores ``selection_bias_E`` is added to, for the ``aux_free`` balancer's
        run-length rule (``update_rate=auto``); None when the router has no natural scale."""
        return None

    def linear_logits(self, x_TD: torch.Tensor, noise_eps: float = 0.0) -> torch.Tensor:
        """float32 logits [T, E] with autocast off, so a bf16 model still routes in fp32; in training,
        ``noise_eps`` > 0 multiplies the router input by U[1-ε, 1+ε] (Switch input jitter)."""
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            x_TD = x_TD.float()
            if self.training and noise_eps > 0:
                x_TD = x_TD * torch.empty_like(x_TD).uniform_(1.0 - noise_eps, 1.0 + noise_eps)
            return F.linear(x_TD, self.weight_ED.float())

    def select_top_k(self, scores_TE: torch.Tensor, k: int) -> torch.Tensor:
        """expert_ids [T, k]: the top-k of ``scores + selection_bias`` (the bias chooses, never weighs)."""
        return (scores_TE + self.selection_bias_E).topk(k, dim=-1).indices

    def token_choice(self, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor, logits_TE: torch.Tensor,
                     probs_TE: torch.Tensor) -> Routing:
        """The Routing of per-token choices: assignment n = t·k + j is token t's j-th expert."""
        T, k = expert_ids_TK.shape
        expert_ids_N = expert_ids_TK.reshape(-1)
        return Routing(
            token_ids_N=torch.arange(T, device=expert_ids_TK.device).repeat_interleave(k),
            expert_ids_N=expert_ids_N,
            weights_N=weights_TK.reshape(-1),
            logits_TE=logits_TE,
            probs_TE=probs_TE,
            tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=self.num_experts),
            num_dropped=0,
            top_k=float(k),
        )

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}"
