"""The loop-over-experts reference backend: for each expert, pick its assignments with a mask over all
N, run the expert on those tokens, scale by the gate weight and index_add into y.

    y_t = Σ_e Σ_{n : expert_n = e, token_n = t} w_n · FFN_e(x_t)

The simplest correct dispatch, sharing no code with the sorted backends' permutation, so the tests
compare every other backend against it. Slow with many experts (E masks over N assignments, E small
GEMMs); not meant for training runs beyond a check.
"""

from __future__ import annotations

import torch

from moe.experts.swiglu import SwiGLUExperts, compute_dtype
from moe.types import Routing


class LoopExperts(SwiGLUExperts):
    """Reference dispatch; same constructor and weights as :class:`SwiGLUExperts`."""

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        dtype = compute_dtype(x_TD)
        y_TD = torch.zeros(x_TD.shape, dtype=dtype, device=x_TD.device)
        # unbind, not w[e]: indexing a stacked parameter inside the loop makes backward O(E²·D·F)
        # (each w[e] backward materialises a full [E, D, F] gradient; docs/design.md "Benchmarks")
        per_expert = zip(*(w.unbind(0) for w in self.stacked_weights(dtype)), strict=True)
        for e, weights in enumerate(per_expert):
            mask_N = routing.expert_ids_N == e
            token_ids = routing.token_ids_N[mask_N]
            out_ND = self.mlp(x_TD[token_ids].to(dtype), weights)
            y_TD.index_add_(0, token_ids, out_ND * routing.weights_N[mask_N].to(dtype).unsqueeze(-1))
        return y_TD
