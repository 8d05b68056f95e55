"""The padded batched-matmul kernel shared by CapacityExperts and GroupedExperts' ``padded_bmm``.

Given rows x_ND already grouped by expert (tokens_per_expert_E rows each) and a capacity C ≥ the
busiest expert's rows:

    scatter expert e's rows into slots [0, count_e) of a zero-padded buffer  x_ECD  [E, C, D]
    out_ECD = the expert MLP of x_ECD, every matmul a torch.bmm over the experts
              (SwiGLU: SiLU(x_ECD @ W_gate) ⊙ (x_ECD @ W_up) @ W_down; biases broadcast over the C slots)
    gather the valid rows back → out_ND

Padded rows are zeros going in and their outputs are discarded, so they add nothing to y or to any
gradient (their output rows get zero gradient, so nothing flows back through them into a weight or
bias). The price is the padding: E·C rows computed for N real ones.

``rounded_slots`` lays the rows out the other way GroupedExperts pads them: each expert's own rows rounded
up to a multiple (not to the busiest expert's), the experts one after another.
"""

from __future__ import annotations

import torch


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= n."""
    return -(-n // multiple) * multiple


def padded_slots(tokens_per_expert_E: torch.Tensor, capacity: int) -> torch.Tensor:
    """slot_N: the flat row (e·C + position within e) of each expert-sorted row in x_ECD."""
    E, device = tokens_per_expert_E.shape[0], tokens_per_expert_E.device
    return _slots(tokens_per_expert_E, torch.arange(E, device=device) * capacity)


def rounded_slots(tokens_per_expert_E: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_N, rows_per_expert_E): every expert's rows rounded up to a multiple of ``multiple``, the
    experts still one after another; slot_N is the row of each expert-sorted row in that layout."""
    rows_per_expert_E = -(-tokens_per_expert_E.to(torch.long) // multiple) * multiple
    return _slots(tokens_per_expert_E, torch.cumsum(rows_per_expert_E, 0) - rows_per_expert_E), rows_per_expert_E


def _slots(tokens_per_expert_E: torch.Tensor, first_slot_E: torch.Tensor) -> torch.Tensor:
    """slot_N = first_slot_E[expert] + position within the expert, for expert-sorted rows."""
    E, device = tokens_per_expert_E.shape[0], tokens_per_expert_E.device
    counts_E = tokens_per_expert_E.to(torch.long)
    n = int(counts_E.sum())
    expert_N = torch.repeat_interleave(torch.arange(E, device=device), counts_E, output_size=n)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    return first_slot_E[expert_N] + torch.arange(n, device=device) - starts_E[expert_N]


def through_slots(x_ND: torch.Tensor, slot_N: torch.Tensor, num_slots: int, fn) -> torch.Tensor:
    """fn applied to a zero buffer of ``num_slots`` rows holding row n of x_ND at slot_N[n], read back at
    slot_N: the rows of fn's output that are real rows."""
    # index_copy: its backward w.r.t. the source is an index_select, so the zero slots get no gradient
    x_PD = x_ND.new_zeros(num_slots, x_ND.shape[-1]).index_copy(0, slot_N, x_ND)
    return fn(x_PD).index_select(0, slot_N)


def padded_expert_outputs(
    x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, capacity: int, weights, mlp
) -> torch.Tensor:
    """FFN_e of every expert-sorted row, computed on the zero-padded [E, C, D] buffer; ``mlp`` is the
    experts' :meth:`~moe.experts.swiglu.SwiGLUExperts.mlp`."""
    E, D = tokens_per_expert_E.shape[0], x_ND.shape[-1]

    def batched_mlp(x_PD: torch.Tensor) -> torch.Tensor:
        out_ECD = mlp(x_PD.view(E, capacity, D), weights, matmul=torch.bmm,
                      add_bias=lambda h_ECX, b_EX: h_ECX + b_EX.unsqueeze(1))
        return out_ECD.reshape(E * capacity, D)

    return through_slots(x_ND, padded_slots(tokens_per_expert_E, capacity), E * capacity, batched_mlp)
