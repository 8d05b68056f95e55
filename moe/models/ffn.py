"""Dense feed-forward blocks.

- ``SwiGLU`` (Shazeer 2002.05202): FFN(x) = W_down (SiLU(W_gate x) ⊙ W_up x) — the backbone's default,
  and the shared expert of an MoE layer.
- ``GELUMLP`` (GPT-2): FFN(x) = W_proj GELU_tanh(W_fc x + b_fc) + b_proj, for importing GPT-2-style
  dense models (``model.mlp=gelu``).
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


class GELUMLP(nn.Module):
    def __init__(self, *, d_model: int, d_ff: int):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)
        nn.init.zeros_(self.fc.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x_TD), approximate="tanh"))
