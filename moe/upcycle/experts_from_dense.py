"""Dense SwiGLU → routed experts: the weight maps of the upcycling methods (Komatsuzaki et al. 2023;
He et al. 2410.07524).

The dense FFN computes FFN(x) = Σ_j down_:,j · SiLU(gate_j·x)·(up_j·x) over its F hidden neurons j.
Each method fills the stacked expert weights (w_gate_EDF, w_up_EDF [E, D, F_e], w_down_EFD [E, F_e, D])
from the dense matrices (gate, up [F, D], down [D, F], nn.Linear layout):

- ``copy`` (Sparse Upcycling, Komatsuzaki et al. ICLR 2023): every expert is the whole dense FFN
  (F_e = F).
- ``virtual_group`` (He et al. 2410.07524): granularity G splits the F neurons into G contiguous shards
  of F/G; expert e = r·G + g holds shard g (R = E/G full copies of the FFN, one per group r).
- ``drop`` (Drop-Upcycling, Nakamura et al. 2502.19261): ``copy``, then a fraction r of each expert's
  neurons is re-initialised — their gate/up rows and down columns are drawn from N(μ, σ²) of the
  dense matrix they come from — so the experts start diverse.

The whole output scale s multiplies the down projection, which keeps the preservation exact
(Megatron spreads s^{1/3} over the three matrices, which is exact only without SiLU).
"""

from __future__ import annotations

import torch

from moe.experts.swiglu import SwiGLUExperts
from moe.models.ffn import SwiGLU


@torch.no_grad()
def copy_into_experts(dense: SwiGLU, experts: SwiGLUExperts, *, granularity: int = 1,
                      output_scale: float = 1.0) -> None:
    """``copy`` (G = 1) or ``virtual_group`` (G > 1): expert r·G + g gets neuron shard g of the FFN."""
    E, F_e, G = experts.num_experts, experts.d_ff, granularity
    F = dense.gate.weight.shape[0]
    if F != G * F_e:
        fits = G == 1 and F % F_e == 0
        hint = f"; with init.method=virtual_group, init.granularity={F // F_e} fits" if fits else ""
        raise ValueError(
            f"the dense FFN has d_ff={F} neurons but {E} experts of model.expert_d_ff={F_e} with "
            f"init.granularity={G} need d_ff = granularity x expert_d_ff = {G * F_e}{hint}"
        )
    if E % G:
        raise ValueError(f"init.granularity={G} must divide model.num_experts={E}")
    for e in range(E):
        shard = slice((e % G) * F_e, (e % G + 1) * F_e)
        experts.w_gate_EDF[e].copy_(dense.gate.weight[shard].T)
        experts.w_up_EDF[e].copy_(dense.up.weight[shard].T)
        experts.w_down_EFD[e].copy_(dense.down.weight[:, shard].T * output_scale)


@torch.no_grad()
def reinitialise_neurons(dense: SwiGLU, experts: SwiGLUExperts, *, drop_ratio: float,
                         generator: torch.Generator) -> None:
    """Drop-Upcycling's partial re-initialisation of each expert (after ``copy_into_experts``)."""
    if not 0.0 <= drop_ratio <= 1.0:
        raise ValueError(f"init.drop_ratio={drop_ratio} must lie in [0, 1]")
    F_e = experts.d_ff
    num_dropped = round(drop_ratio * F_e)
    stats = {name: (w.mean().item(), w.std().item()) for name, w in
             (("gate", dense.gate.weight), ("up", dense.up.weight), ("down", dense.down.weight))}
    for e in range(experts.num_experts):
        neurons = torch.randperm(F_e, generator=generator)[:num_dropped]
        for name, weight_DF in (("gate", experts.w_gate_EDF[e]), ("up", experts.w_up_EDF[e])):
            mean, std = stats[name]
            weight_DF[:, neurons] = torch.normal(mean, std, (weight_DF.shape[0], num_dropped), generator=generator)
        mean, std = stats["down"]
        down_FD = experts.w_down_EFD[e]
        down_FD[neurons] = torch.normal(mean, std, (num_dropped, down_FD.shape[1]), generator=generator)
