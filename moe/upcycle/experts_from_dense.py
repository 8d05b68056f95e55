"""Dense FFN → routed experts: the weight maps of the upcycling methods (Komatsuzaki et al. 2023;
He et al. 2410.07524), for SwiGLU FFNs and GPT-2's GELU MLP (experts with ``activation="gelu"``).

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

A GELU MLP, FFN(x) = proj · GELU(fc·x + b_fc) + b_proj, maps the same way with fc in the place of gate
(no up): b_fc is sharded with its neurons, and each of the G shards of a group owns s·b_proj/G of the
output bias, so a group's G renormalised shards (weight 1/G each, times s = G) add up to FFN(x).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moe.experts.swiglu import SwiGLUExperts
from moe.models.ffn import GELUMLP, SwiGLU

DENSE_KIND = {SwiGLU: "swiglu", GELUMLP: "gelu"}  # dense FFN class -> the experts' activation it fills


def dense_matrices(dense: nn.Module, experts: SwiGLUExperts) -> dict[str, Any]:
    """The dense FFN's neuron-indexed matrices under the experts' names: ``in`` [(name, W [F, D])] read
    by x, ``out`` W [D, F] into the residual (nn.Linear layout); ValueError if the kinds differ."""
    kind = DENSE_KIND.get(type(dense))
    if kind != experts.activation:
        raise ValueError(f"the dense FFN is {type(dense).__name__} but the experts are {experts.activation!r}: "
                         f"model.mlp must be the dense model's")
    if kind == "swiglu":
        return {"in": [("w_gate_EDF", dense.gate.weight), ("w_up_EDF", dense.up.weight)],
                "out": ("w_down_EFD", dense.down.weight)}
    return {"in": [("w_fc_EDF", dense.fc.weight)], "out": ("w_proj_EFD", dense.proj.weight)}


@torch.no_grad()
def copy_into_experts(dense: nn.Module, experts: SwiGLUExperts, *, granularity: int = 1,
                      output_scale: float = 1.0) -> None:
    """``copy`` (G = 1) or ``virtual_group`` (G > 1): expert r·G + g gets neuron shard g of the FFN."""
    E, F_e, G = experts.num_experts, experts.d_ff, granularity
    matrices = dense_matrices(dense, experts)
    F = matrices["in"][0][1].shape[0]
    if F != G * F_e:
        fits = G == 1 and F % F_e == 0
        hint = f"; with init.method=virtual_group, init.granularity={F // F_e} fits" if fits else ""
        raise ValueError(
            f"the dense FFN has d_ff={F} neurons but {E} experts of model.expert_d_ff={F_e} with "
            f"init.granularity={G} need d_ff = granularity x expert_d_ff = {G * F_e}{hint}"
        )
    if E % G:
        raise ValueError(f"init.granularity={G} must divide model.num_experts={E}")
    out_name, out_DF = matrices["out"]
    if hasattr(experts, "load_stacks"):  # experts that store their stacks in another form (MPO cores)
        shards = [slice((e % G) * F_e, (e % G + 1) * F_e) for e in range(E)]
        stacks = {name: torch.stack([in_FD[shard].T for shard in shards]) for name, in_FD in matrices["in"]}
        stacks[out_name] = torch.stack([out_DF[:, shard].T * output_scale for shard in shards])
        experts.load_stacks(stacks)
        return
    for e in range(E):
        shard = slice((e % G) * F_e, (e % G + 1) * F_e)
        for name, in_FD in matrices["in"]:
            getattr(experts, name)[e].copy_(in_FD[shard].T)
        getattr(experts, out_name)[e].copy_(out_DF[:, shard].T * output_scale)
        if experts.activation == "gelu":
            experts.b_fc_EF[e].copy_(dense.fc.bias[shard])
            experts.b_proj_ED[e].copy_(dense.proj.bias * (output_scale / G))


@torch.no_grad()
def reinitialise_neurons(dense: nn.Module, experts: SwiGLUExperts, *, drop_ratio: float,
                         generator: torch.Generator) -> None:
    """Drop-Upcycling's partial re-initialisation of each expert (after ``copy_into_experts``); a GELU
    expert's re-drawn neurons get the input bias 0."""
    if not 0.0 <= drop_ratio <= 1.0:
        raise ValueError(f"init.drop_ratio={drop_ratio} must lie in [0, 1]")
    F_e = experts.d_ff
    num_dropped = round(drop_ratio * F_e)
    matrices = dense_matrices(dense, experts)
    inputs, (out_name, out_DF) = matrices["in"], matrices["out"]
    stats = {name: (w.mean().item(), w.std().item()) for name, w in [*inputs, (out_name, out_DF)]}
    for e in range(experts.num_experts):
        neurons = torch.randperm(F_e, generator=generator)[:num_dropped]
        for name, _ in inputs:
            mean, std = stats[name]
            weight_DF = getattr(experts, name)[e]
            weight_DF[:, neurons] = torch.normal(mean, std, (weight_DF.shape[0], num_dropped), generator=generator)
        if experts.activation == "gelu":
            experts.b_fc_EF[e, neurons] = 0.0
        mean, std = stats[out_name]
        out_FD = getattr(experts, out_name)[e]
        out_FD[neurons] = torch.normal(mean, std, (num_dropped, out_FD.shape[1]), generator=generator)
