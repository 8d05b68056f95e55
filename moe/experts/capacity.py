"""The padded, static-shape backend: every expert gets the same number of rows C, so the three
projections are plain batched matmuls over the stacked weights (the kernel: moe/experts/padded.py).
The assignments are sorted by expert (permute.py), run through the padded kernel, scaled by the gate
weights and added back to their tokens.

The capacity C (rows per expert, padding included):

- ``capacity_factor=None`` (default): C = max_e tokens_per_expert_E[e], rounded up to a multiple of
  ``pad_multiple``. Nothing ever overflows; C follows the busiest expert, so it changes from step
  to step (round it with ``pad_multiple`` to keep the number of distinct shapes small).
- ``capacity_factor=c``: C = ceil(k·T/E · c) (k·T = the assignments the router aimed for, the same
  formula as ``moe/dropping.py``), rounded up likewise — a shape that depends only on T. If some
  expert has more rows than C this backend raises a RuntimeError: it never drops by itself. Dropping
  is a routing decision made before the experts (``model.capacity_factor``, moe/layer.py); set it
  to at most this backend's factor.

Cost and when it pays:

- Memory: the buffers x_ECD, the two [E, C, F] projections and out_ECD hold E·C rows instead of N,
  i.e. E·C·(2D + 3F) activations kept for backward versus N·(2D + 3F) for the sorted backends — the
  padding overhead is E·C/N. With C from the busiest expert and skewed routing E·C can approach E·N
  (every expert padded to the hottest one), which makes it many times slower under skew.
- Speed: fast when routing is near-balanced (E·C ≈ N) — one bmm per projection, no per-expert
  dispatch, and a fixed shape per step — especially with many small experts, where the sorted loop
  pays per-expert overhead, and in bf16 on CPU, where every new matrix shape costs setup time and
  ``pad_multiple: 64`` keeps the shapes few (the timings: bench/README.md, "The capacity backend").
"""

from __future__ import annotations

import torch

from moe.dropping import expert_capacity
from moe.experts.padded import padded_expert_outputs, round_up
from moe.experts.permute import combine, gather_rows, sort_by_expert
from moe.experts.swiglu import SwiGLUExperts, compute_dtype
from moe.types import Routing


class CapacityExperts(SwiGLUExperts):
    """Padded batched-matmul dispatch (see the module docstring).

    Args:
        num_experts, d_model, d_ff, init_std, activation: as :class:`SwiGLUExperts`.
        pad_multiple: round the capacity C up to a multiple of this (64 helps bf16 on CPU).
        capacity_factor: None: C from the busiest expert; a number c > 0: fixed C = ceil(k·T/E · c),
            and an error if an expert gets more rows (enable dropping with ``model.capacity_factor``).
    """

    def __init__(
        self, *, num_experts: int, d_model: int, d_ff: int, init_std: float = 0.02,
        pad_multiple: int = 1, capacity_factor: float | None = None, activation: str = "swiglu",
    ):
        super().__init__(num_experts=num_experts, d_model=d_model, d_ff=d_ff, init_std=init_std, activation=activation)
        if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int) or pad_multiple < 1:
            raise ValueError(f"experts.pad_multiple={pad_multiple!r} must be an integer >= 1")
        if capacity_factor is not None and (
            isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float))
            or not capacity_factor > 0
        ):
            raise ValueError(f"experts.capacity_factor={capacity_factor!r} must be a number > 0 (or null)")
        self.pad_multiple = pad_multiple
        self.capacity_factor = None if capacity_factor is None else float(capacity_factor)

    def capacity(self, routing: Routing) -> int:
        """C, the rows per expert (padding included) for this routing; raises RuntimeError when a fixed
        ``capacity_factor`` is too small for the busiest expert."""
        max_count = int(routing.tokens_per_expert_E.max()) if routing.token_ids_N.numel() else 0
        if self.capacity_factor is None:
            needed = max_count
        else:
            needed = expert_capacity(num_tokens=routing.num_tokens, top_k=routing.top_k,
                                     num_experts=self.num_experts, capacity_factor=self.capacity_factor)
        capacity = round_up(needed, self.pad_multiple)
        if max_count > capacity:
            raise RuntimeError(
                f"CapacityExperts: an expert got {max_count} rows but the capacity is {capacity} "
                f"(experts.capacity_factor={self.capacity_factor}, T={routing.num_tokens}, "
                f"k={routing.top_k}, E={self.num_experts}). This backend does not drop tokens: enable "
                f"dropping in the model (model.capacity_factor <= experts.capacity_factor) or set "
                f"experts.capacity_factor=null to size C by the busiest expert."
            )
        return capacity

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        """y_TD in the compute dtype (x's, or autocast's); unassigned tokens get zeros."""
        dtype = compute_dtype(x_TD)
        C = self.capacity(routing)
        sorted_ = sort_by_expert(routing)
        x_ND = gather_rows(x_TD, sorted_, dtype)
        out_ND = padded_expert_outputs(x_ND, sorted_.tokens_per_expert_E, C, self.stacked_weights(dtype), self.mlp)
        return combine(out_ND, sorted_, x_TD.shape[0])

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, pad_multiple={self.pad_multiple}, "
                f"capacity_factor={self.capacity_factor}")
