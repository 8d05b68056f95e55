"""SwiGLU experts held as stacked ``[E, ...]`` parameters (one tensor per projection, not E modules).

Expert e computes  FFN_e(x) = (SiLU(x W_gate,e) ⊙ (x W_up,e)) W_down,e  with W_gate,e, W_up,e ∈ R^{D×F}
and W_down,e ∈ R^{F×D} (the "x @ w" layout, so a grouped GEMM can take the stacks as they are).

A layer's output is  y_t = Σ_{(t, e, w) ∈ routing} w · FFN_e(x_t); tokens with no assignment (dropped
by a capacity limit) get 0, so the residual stream carries them unchanged. Subclasses differ only in
how they dispatch (:meth:`forward`); the weights, their init and their layout are shared, so
state dicts move between backends unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe.types import Routing


def compute_dtype(x_TD: torch.Tensor) -> torch.dtype:
    """The dtype experts compute in: autocast's when it is on (it does not reach the grouped GEMM),
    else the activations'."""
    device_type = x_TD.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x_TD.dtype


class SwiGLUExperts(nn.Module):
    def __init__(self, *, num_experts: int, d_model: int, d_ff: int, init_std: float = 0.02):
        super().__init__()
        for name, value in (("num_experts", num_experts), ("d_model", d_model), ("d_ff", d_ff)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"experts.{name}={value!r} must be an integer >= 1")
        if init_std <= 0:
            raise ValueError(f"experts.init_std={init_std} must be > 0")
        self.num_experts, self.d_model, self.d_ff, self.init_std = num_experts, d_model, d_ff, init_std
        self.w_gate_EDF = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w_up_EDF = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w_down_EFD = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in (self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD):
            nn.init.normal_(weight, std=self.init_std)

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        raise NotImplementedError("use a dispatch backend: GroupedExperts or LoopExperts")

    @staticmethod
    def expert_ffn(x_ND: torch.Tensor, w_gate_DF, w_up_DF, w_down_FD) -> torch.Tensor:
        """One expert on its rows (weights in the compute dtype of x)."""
        return (F.silu(x_ND @ w_gate_DF) * (x_ND @ w_up_DF)) @ w_down_FD

    def compute_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three stacks in the compute dtype."""
        return tuple(w.to(dtype) for w in (self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD))

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}"
