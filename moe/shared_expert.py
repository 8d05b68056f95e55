"""Shared (always-on) experts: DeepSeekMoE (Dai et al. 2401.06066) and Qwen2-MoE.

    y_t = Σ_routed w · FFN_e(x_t)  +  g(x_t) · FFN_shared(x_t)

DeepSeekMoE isolates K_s shared experts of the fine-grained expert size; because a sum of K_s SwiGLU
experts equals one SwiGLU whose hidden units are their concatenation, they are held as one SwiGLU of
hidden K_s × d_ff. Qwen2-MoE uses one shared expert of its own size with a scalar sigmoid gate
g(x) = σ(w_g·x); DeepSeekMoE has no gate (g = 1).
"""

from __future__ import annotations

import torch
from torch import nn

from moe.models.ffn import SwiGLU


class SharedExpert(nn.Module):
    def __init__(self, *, d_model: int, num_experts: int, d_ff: int, gate: bool = False):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"model.num_shared_experts={num_experts} must be >= 1 to build a shared expert")
        self.num_experts = num_experts
        self.ffn = SwiGLU(d_model=d_model, d_ff=num_experts * d_ff)
        self.gate = nn.Linear(d_model, 1, bias=False) if gate else None

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        y_TD = self.ffn(x_TD)
        if self.gate is not None:
            y_TD = torch.sigmoid(self.gate(x_TD)) * y_TD
        return y_TD
