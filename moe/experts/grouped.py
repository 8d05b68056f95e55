"""The default dispatch backend: sort the assignments by expert once, run every expert on its
contiguous slice, scale by the gate weights and scatter-add back (permute → compute → unpermute).

Two ways to run the experts on the sorted rows, chosen by ``impl``:

- ``grouped_mm``: three grouped GEMMs (``torch.nn.functional.grouped_mm``, forward and backward on
  CPU from torch 2.9) over the jagged groups given by the offsets cumsum(tokens_per_expert).
- ``sorted_loop``: a Python loop over the E contiguous slices (``torch.split`` + one GEMM each).
- ``auto`` (default): ``grouped_mm`` when torch has it and the row strides meet its 16-byte alignment,
  else ``sorted_loop``. Measured on the 2-core CPU (``bench/dispatch.py``), grouped_mm is at least
  as fast as the sorted loop from a few to many experts, and much faster with many small experts,
  where the loop pays per-expert dispatch overhead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe.experts.swiglu import SwiGLUExperts, compute_dtype
from moe.types import Routing

IMPLS = ("auto", "grouped_mm", "sorted_loop")
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward
    rejects expanded gradients (e.g. from ``.sum()``), seen with torch 2.13 on CPU."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def grouped_mm(x_ND: torch.Tensor, w_EXY: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    return _ContiguousGrad.apply(_grouped_mm(x_ND, w_EXY, offs=offsets_E))


class GroupedExperts(SwiGLUExperts):
    def __init__(self, *, num_experts: int, d_model: int, d_ff: int, init_std: float = 0.02, impl: str = "auto"):
        super().__init__(num_experts=num_experts, d_model=d_model, d_ff=d_ff, init_std=init_std)
        if impl not in IMPLS:
            raise ValueError(f"experts.impl={impl!r} is not one of {IMPLS}")
        if impl == "grouped_mm" and _grouped_mm is None:
            raise ValueError(f"experts.impl='grouped_mm' needs torch>=2.9 (installed: {torch.__version__})")
        self.impl = impl

    def resolved_impl(self, dtype: torch.dtype) -> str:
        """The implementation ``auto`` picks for activations of this dtype."""
        if self.impl != "auto":
            return self.impl
        row_bytes = torch.finfo(dtype).bits // 8
        aligned = (self.d_model * row_bytes) % 16 == 0 and (self.d_ff * row_bytes) % 16 == 0
        return "grouped_mm" if _grouped_mm is not None and aligned else "sorted_loop"

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        dtype = compute_dtype(x_TD)
        weights = self.compute_weights(dtype)
        # permute: one stable sort groups the assignments by expert
        order_N = torch.argsort(routing.expert_ids_N, stable=True)
        token_ids_N = routing.token_ids_N[order_N]
        x_ND = x_TD[token_ids_N].to(dtype)
        if self.resolved_impl(dtype) == "grouped_mm":
            offsets_E = torch.cumsum(routing.tokens_per_expert_E, 0).to(torch.int32)
            h_NF = F.silu(grouped_mm(x_ND, weights[0], offsets_E)) * grouped_mm(x_ND, weights[1], offsets_E)
            out_ND = grouped_mm(h_NF, weights[2], offsets_E)
        else:
            slices = torch.split(x_ND, routing.tokens_per_expert_E.tolist())
            out_ND = torch.cat([self.expert_ffn(x, *w) for x, *w in zip(slices, *(w.unbind(0) for w in weights))])
        # unpermute: scale by the gate weight and add each row back to its token
        out_ND = out_ND * routing.weights_N[order_N, None].to(dtype)
        return torch.zeros(x_TD.shape, dtype=dtype, device=x_TD.device).index_add_(0, token_ids_N, out_ND)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl}"
