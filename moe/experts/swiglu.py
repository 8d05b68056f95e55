"""Expert MLPs held as stacked ``[E, ...]`` parameters (one tensor per projection, not E modules).

Expert e computes, by ``activation``,

- ``swiglu`` (the default; Shazeer 2020, "GLU Variants Improve Transformer"):
  FFN_e(x) = (SiLU(x W_gate,e) ⊙ (x W_up,e)) W_down,e,   W_gate,e, W_up,e ∈ R^{D×F},  W_down,e ∈ R^{F×D}
- ``gelu`` (GPT-2's MLP, for upcycling GPT-2-style models; ``model.mlp=gelu``):
  FFN_e(x) = GELU_tanh(x W_fc,e + b_fc,e) W_proj,e + b_proj,e,   W_fc,e ∈ R^{D×F},  W_proj,e ∈ R^{F×D}

in the "x @ w" layout, so a grouped GEMM takes the stacks as they are. A layer's output is

    y_t = Σ_{(t, e, w) ∈ routing} w · FFN_e(x_t)

and a token with no assignment (dropped by a capacity limit) gets 0, so the residual stream carries it
unchanged. Backends differ only in how they dispatch the rows; weights, init and layout live here, so a
state dict moves between backends unchanged.

Dtypes: the computation runs in x's dtype, or in the autocast dtype when autocast is on (as
``nn.Linear`` would); the stacked weights and the float32 gate weights are cast to it, and y_TD comes
back in it. Autocast itself does not reach ``grouped_mm``, hence the explicit casts.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moe.experts.permute import combine, gather_rows, sort_by_expert
from moe.types import Routing

# activation -> the names of its stacked tensors, in the order of ``stacked_weights`` (biases: ``b_``)
PARAMETERS = {"swiglu": ("w_gate_EDF", "w_up_EDF", "w_down_EFD"),
              "gelu": ("w_fc_EDF", "b_fc_EF", "w_proj_EFD", "b_proj_ED")}


def compute_dtype(x_TD: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on x_TD runs in: the autocast dtype if autocast is on (it leaves float64
    alone), else x_TD's own dtype."""
    device_type = x_TD.device.type
    if torch.is_autocast_enabled(device_type) and x_TD.dtype != torch.float64:
        return torch.get_autocast_dtype(device_type)
    return x_TD.dtype


class SwiGLUExperts(nn.Module):
    """E experts: SwiGLU w_gate_EDF [E, D, F], w_up_EDF [E, D, F], w_down_EFD [E, F, D]; or, with
    ``activation="gelu"``, w_fc_EDF [E, D, F], b_fc_EF [E, F], w_proj_EFD [E, F, D], b_proj_ED [E, D].
    (The class keeps its name, the base of every backend, from when SwiGLU was the only MLP.)

    ``forward`` permutes the tokens by expert once, asks :meth:`expert_outputs` for every sorted row,
    scales by ``routing.weights_N`` and scatter-adds back. Subclasses implement ``expert_outputs``
    (or, like the loop reference, all of ``forward``), each with its own matmul, through :meth:`mlp`.

    Args:
        num_experts: E, routed experts.
        d_model: D, model width.
        d_ff: F, each expert's hidden width.
        init_std: std of the normal init of the weight stacks (biases start at 0), for experts built on
            their own. Inside ``DecoderLM`` every expert weight is redrawn from ``model.init_std``
            (the output projection scaled for depth), so this is not a config knob.
        activation: ``swiglu`` or ``gelu``; the model passes ``model.mlp``, so it is not a knob of
            configs/experts/ either.
    """

    def __init__(self, *, num_experts: int, d_model: int, d_ff: int, init_std: float = 0.02,
                 activation: str = "swiglu"):
        super().__init__()
        for name, value in (("num_experts", num_experts), ("d_model", d_model), ("d_ff", d_ff)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"experts.{name}={value!r} must be an integer >= 1")
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0:
            raise ValueError(f"experts.init_std={init_std!r} must be a number > 0")
        if activation not in PARAMETERS:
            raise ValueError(f"model.mlp={activation!r}: experts are one of {tuple(PARAMETERS)}")
        self.num_experts, self.d_model, self.d_ff = num_experts, d_model, d_ff
        self.init_std, self.activation = float(init_std), activation
        sizes = {"D": d_model, "F": d_ff, "E": num_experts}
        for name in PARAMETERS[activation]:
            self.register_parameter(name, nn.Parameter(torch.empty([sizes[c] for c in name.rsplit("_", 1)[1]])))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in PARAMETERS[self.activation]:
            if name.startswith("b_"):
                nn.init.zeros_(getattr(self, name))
            else:
                nn.init.normal_(getattr(self, name), mean=0.0, std=self.init_std)

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        """y_TD in the compute dtype (x's, or autocast's); unassigned tokens get zeros."""
        dtype = compute_dtype(x_TD)
        sorted_ = sort_by_expert(routing)
        x_ND = gather_rows(x_TD, sorted_, dtype)
        out_ND = self.expert_outputs(x_ND, sorted_.tokens_per_expert_E, self.stacked_weights(dtype))
        return combine(out_ND, sorted_, x_TD.shape[0])

    def expert_outputs(self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, weights) -> torch.Tensor:
        """FFN_e of every row of x_ND, whose rows are grouped by expert (tokens_per_expert_E rows each)."""
        raise NotImplementedError(f"{type(self).__name__} is a base class: use GroupedExperts or LoopExperts")

    def stacked_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The stacks of ``PARAMETERS[activation]`` in the compute dtype (a no-op when they already are)."""
        return tuple(getattr(self, name).to(dtype) for name in PARAMETERS[self.activation])

    def mlp(self, x: torch.Tensor, weights, matmul: Callable = operator.matmul,
            add_bias: Callable = operator.add) -> torch.Tensor:
        """The expert MLP with a backend's own ``matmul(x, w)`` (one expert's ``@``, a grouped GEMM over
        sorted rows, a batched matmul over padded rows) and ``add_bias(h, b)`` (b: one expert's or the
        stack, which the backend lines up with its rows)."""
        if self.activation == "swiglu":
            w_gate, w_up, w_down = weights
            return matmul(F.silu(matmul(x, w_gate)) * matmul(x, w_up), w_down)
        w_fc, b_fc, w_proj, b_proj = weights
        return add_bias(matmul(F.gelu(add_bias(matmul(x, w_fc), b_fc), approximate="tanh"), w_proj), b_proj)

    def extra_repr(self) -> str:
        extra = "" if self.activation == "swiglu" else f", activation={self.activation!r}"
        return f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}{extra}"
