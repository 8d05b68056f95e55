"""Scorers: the part of a learned router that maps tokens x_TD to float32 scores [T, E].

A router is a scorer plus a selection rule (top-k, expert choice, ReLU, Sinkhorn, ...), so the
selection rules never inherit a scorer they do not use:

- :class:`LinearScorer` — z = W x, one [E, D] map (Switch, Mixtral, DeepSeek-V3 and most others);
- :class:`CosineScorer` — z = cos(W_p x, e) / τ in a low-dimensional space (X-MoE, 2204.09179);
- :class:`RepresentativeScorer` — |(x̂·û_e) · SiLU(x̂·ĝ_e)| from one fixed neuron per expert (CMoE,
  2502.04416), filled in by carving.

Each scorer owns its initialisation (``reset_parameters``, also called by its constructor), and all of
them run with autocast off, so a bf16 model still routes in float32 (Switch §2.4, "selective
precision"). The formulas are in each class's docstring; the routers cite them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_router_sizes(*, d_model: int, num_experts: int, top_k: int | None = None) -> None:
    """Build-time checks shared by all routers; the messages name the config field."""
    if d_model < 1:
        raise ValueError(f"d_model must be >= 1, got d_model={d_model}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got num_experts={num_experts}")
    if top_k is not None and not 1 <= top_k <= num_experts:
        detail = f": top_k={top_k} > num_experts={num_experts}" if top_k > num_experts else ""
        raise ValueError(f"router.top_k={top_k} must lie in [1, num_experts={num_experts}]{detail}")


class LinearScorer(nn.Module):
    """z_t = W x_t with an fp32 master weight ``weight_ED`` [E, D] drawn from N(0, init_std²).

    In training, ``noise_eps`` > 0 multiplies the input by U[1-ε, 1+ε] first (Switch input jitter).
    """

    def __init__(self, *, d_model: int, num_experts: int, init_std: float):
        super().__init__()
        check_router_sizes(d_model=d_model, num_experts=num_experts)
        self.init_std = init_std
        self.weight_ED = nn.Parameter(torch.empty(num_experts, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight_ED, std=self.init_std)

    def forward(self, x_TD: torch.Tensor, noise_eps: float = 0.0) -> torch.Tensor:
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            x_TD = x_TD.float()
            if self.training and noise_eps > 0:
                x_TD = x_TD * torch.empty_like(x_TD).uniform_(1.0 - noise_eps, 1.0 + noise_eps)
            return F.linear(x_TD, self.weight_ED.float())


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


class CosineScorer(nn.Module):
    """z_t,i = cos(W_p x_t, e_i) / τ (X-MoE), or with ``perturbed`` LibMoE's
    (h·e) / ((‖h‖ + c)(‖e‖ + c) τ), c = ``perturb_constant``.

    W_p = ``proj_PD`` [P, D] from N(0, init_std²); e = ``expert_embed_EP`` [E, P], orthogonal at init;
    τ = exp(clamp(``log_temperature``, log 0.01, log 1)), initialised to ``init_temperature``.
    Unperturbed, the norms are clamped below at 1e-6 only (F.normalize).
    """

    def __init__(self, *, d_model: int, num_experts: int, d_proj: int, init_temperature: float,
                 perturbed: bool, perturb_constant: float, init_std: float):
        super().__init__()
        if d_proj < 1:
            raise ValueError(f"router.d_proj={d_proj} must be >= 1")
        if not MIN_TEMPERATURE <= init_temperature <= MAX_TEMPERATURE:
            raise ValueError(
                f"router.init_temperature={init_temperature} must lie in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]"
            )
        if perturb_constant <= 0:
            raise ValueError(f"router.perturb_constant={perturb_constant} must be > 0")
        check_router_sizes(d_model=d_model, num_experts=num_experts)
        self.init_temperature, self.init_std = init_temperature, init_std
        self.perturbed, self.perturb_constant = bool(perturbed), perturb_constant
        self.proj_PD = nn.Parameter(torch.empty(d_proj, d_model))
        self.expert_embed_EP = nn.Parameter(torch.empty(num_experts, d_proj))
        self.log_temperature = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.proj_PD, std=self.init_std)
        nn.init.orthogonal_(self.expert_embed_EP)
        with torch.no_grad():
            self.log_temperature.fill_(math.log(self.init_temperature))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.clamp(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)).exp()

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            h_TP = F.linear(x_TD.float(), self.proj_PD.float())
            e_EP = self.expert_embed_EP.float()
            if self.perturbed:
                c = self.perturb_constant
                cos_TE = (h_TP @ e_EP.T) / ((h_TP.norm(dim=-1, keepdim=True) + c) * (e_EP.norm(dim=-1) + c))
            else:
                cos_TE = F.normalize(h_TP, dim=-1, eps=1e-6) @ F.normalize(e_EP, dim=-1, eps=1e-6).T
            return cos_TE / self.temperature.float()

    def extra_repr(self) -> str:
        return f"d_proj={self.proj_PD.shape[0]}, perturbed={self.perturbed}, perturb_constant={self.perturb_constant}"


class RepresentativeScorer(nn.Module):
    """CMoE's analytic score: score_e(x) = |(x̂·û_e) · SiLU(x̂·ĝ_e)| with x̂ = x/‖x‖.

    û_e, ĝ_e are the L2-normalised up/gate rows of expert e's representative neuron (buffers ``up_ED``
    and ``gate_ED``: fixed, no gradient, saved in checkpoints). Built from scratch they are random unit
    vectors; carving fills them with :meth:`set_representatives`.
    """

    def __init__(self, *, d_model: int, num_experts: int):
        super().__init__()
        check_router_sizes(d_model=d_model, num_experts=num_experts)
        self.register_buffer("gate_ED", torch.empty(num_experts, d_model))
        self.register_buffer("up_ED", torch.empty(num_experts, d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.set_representatives(torch.randn_like(self.gate_ED), torch.randn_like(self.up_ED))

    @torch.no_grad()
    def set_representatives(self, gate_ED: torch.Tensor, up_ED: torch.Tensor) -> None:
        """The representative neurons' dense gate/up rows [E, D] (normalised here)."""
        self.gate_ED.copy_(F.normalize(gate_ED.float(), dim=-1))
        self.up_ED.copy_(F.normalize(up_ED.float(), dim=-1))

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            x_TD = F.normalize(x_TD.float(), dim=-1)
            return ((x_TD @ self.up_ED.T) * F.silu(x_TD @ self.gate_ED.T)).abs()
