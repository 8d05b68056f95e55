"""Dense SwiGLU feed-forward (Shazeer 2002.05202): FFN(x) = W_down (SiLU(W_gate x) ⊙ W_up x).

Used for the dense blocks of the backbone and as the shared expert of an MoE layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, *, d_model: int, d_ff: int):
        super().__init__()
        if d_ff < 1:
            raise ValueError(f"d_ff must be >= 1, got d_ff={d_ff}")
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x_TD)) * self.up(x_TD))
