"""What every learned router shares: a scorer module, the optional selection-only bias, and the
assembly of a token-choice :class:`moe.types.Routing` from per-token top-k choices.

A router is composed, not specialised by deletion: ``scorer`` (moe/routers/scorers.py: linear, cosine
or CMoE's representative neurons) maps x_TD to float32 scores [T, E], and the subclass's ``forward``
turns scores into a Routing with its own selection rule.

The selection bias ``selection_bias_E`` (a buffer, zero at init, no gradient) is added to the scores
used to *choose* experts, never to the gate weights (DeepSeek-V3's auxiliary-loss-free balancing,
Wang et al. 2408.15664). The ``aux_free`` balancer updates it in place once per optimizer step. A
router whose selection a per-expert constant cannot change (expert choice) is built without it, so
``aux_free`` refuses to attach instead of doing nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.config_upgrade import rename_state_keys
from moe.routers.scorers import check_router_sizes
from moe.types import Routing


class Router(nn.Module):
    """A ``scorer`` [T, D] → [T, E] and, with ``selection_bias``, the ``selection_bias_E`` buffer."""

    # State-dict names from before the scorer was a module of its own → where they live now, so that
    # older checkpoints still load. Subclasses extend it with their scorer's old names.
    LEGACY_KEYS: dict[str, str] = {"weight_ED": "scorer.weight_ED"}

    def __init__(self, *, scorer: nn.Module, d_model: int, num_experts: int, top_k: int | None,
                 selection_bias: bool = True):
        super().__init__()
        check_router_sizes(d_model=d_model, num_experts=num_experts, top_k=top_k)
        self.d_model, self.num_experts, self.top_k = d_model, num_experts, top_k
        self.scorer = scorer
        if selection_bias:
            self.register_buffer("selection_bias_E", torch.zeros(num_experts))

    def reset_parameters(self) -> None:
        self.scorer.reset_parameters()

    def selection_score_scale(self) -> float | None:
        """The size of the scores ``selection_bias_E`` is added to, for the ``aux_free`` balancer's
        run-length rule (``update_rate=auto``); None when the router has no natural scale."""
        return None

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_state_keys(state_dict, prefix, self.LEGACY_KEYS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}"
