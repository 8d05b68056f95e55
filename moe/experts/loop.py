"""The loop-over-experts reference backend: for each expert, gather its assignments with a mask,
compute, scale by the gate weight and add back. The simplest correct dispatch; the tests compare every
other backend against it. Slow with many experts (one mask over all N assignments per expert).
"""

from __future__ import annotations

import torch

from moe.experts.swiglu import SwiGLUExperts, compute_dtype
from moe.types import Routing


class LoopExperts(SwiGLUExperts):
    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        dtype = compute_dtype(x_TD)
        y_TD = torch.zeros(x_TD.shape, dtype=dtype, device=x_TD.device)
        # unbind, not w[e]: indexing a stacked parameter in a loop makes backward O(E²) (PERF_NOTES)
        for e, weights in enumerate(zip(*self.compute_weights(dtype))):
            mask_N = routing.expert_ids_N == e
            token_ids = routing.token_ids_N[mask_N]
            out_ND = self.expert_ffn(x_TD[token_ids].to(dtype), *weights)
            y_TD.index_add_(0, token_ids, out_ND * routing.weights_N[mask_N, None].to(dtype))
        return y_TD
