"""Upcycle the MLPs of *any* ``nn.Module`` in place — a vision encoder, a multimodal connector — as
CuMo (Li et al. 2405.05949) does for LLaVA's CLIP encoder and MLP connector.

    from moe.upcycle.module import upcycle_module
    replaced = upcycle_module(vit, match=r"blocks\\.\\d+\\.mlp$", num_experts=4, top_k=2)

Each submodule whose qualified name matches (a regex, searched) is replaced by a :class:`ModuleMoE`
holding E deep copies of it and a fresh top-k router (Sparse Upcycling, Komatsuzaki et al. 2023).
The experts are whatever the module was (any shape-preserving map of the last dimension: GELU MLPs
with biases, convolution-free adapters, ...), dispatched with a loop over experts. With
``order="topk_then_softmax"`` the gate weights of a token sum to 1 over identical experts, so the
upcycled model computes exactly what the original did until training makes the experts diverge.
Balance losses are not attached here: read ``module.last_routing`` after a forward to add one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch
from torch import nn

from moe.routers import TopKRouter
from moe.types import Routing


class ModuleMoE(nn.Module):
    """y = Σ_{(t,e,w)} w · expert_e(x_t) over the routing of the flattened leading dimensions."""

    def __init__(self, *, expert: nn.Module, d_model: int, num_experts: int, top_k: int,
                 order: str = "topk_then_softmax", router_init_std: float = 0.02):
        super().__init__()
        self.router = TopKRouter(d_model=d_model, num_experts=num_experts, top_k=top_k, order=order,
                                 init_std=router_init_std)
        self.experts = nn.ModuleList(copy.deepcopy(expert) for _ in range(num_experts))
        self.last_routing: Routing | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_TD = x.reshape(-1, x.shape[-1])
        routing = self.router(x_TD)
        self.last_routing = routing
        outputs = []  # (token ids, weighted expert output) per expert
        for e, expert in enumerate(self.experts):
            mask_N = routing.expert_ids_N == e
            token_ids = routing.token_ids_N[mask_N]
            outputs.append((token_ids, expert(x_TD[token_ids]) * routing.weights_N[mask_N, None].to(x.dtype)))
        out_dtype, width = outputs[0][1].dtype, outputs[0][1].shape[-1]  # the module may change the width
        y_TD = torch.zeros(x_TD.shape[0], width, dtype=out_dtype, device=x.device)
        for token_ids, out_ND in outputs:
            y_TD = y_TD.index_add(0, token_ids, out_ND)
        return y_TD.reshape(*x.shape[:-1], width)


def upcycle_module(model: nn.Module, *, match: str | Callable[[str, nn.Module], bool], num_experts: int,
                   top_k: int, order: str = "topk_then_softmax", d_model: int | None = None,
                   router_init_std: float = 0.02) -> list[str]:
    """Replace every matching submodule with a :class:`ModuleMoE` of copies of it; returns their names.

    ``d_model`` (the router's input width) defaults to the ``in_features`` of the module's first
    ``nn.Linear``."""
    matches = (lambda name, _m: re.search(match, name) is not None) if isinstance(match, str) else match
    targets = [(name, module) for name, module in model.named_modules() if name and matches(name, module)]
    if not targets:
        raise ValueError(f"upcycle_module: no submodule of {type(model).__name__} matches {match!r}")
    for name, module in targets:
        width = d_model or next((m.in_features for m in module.modules() if isinstance(m, nn.Linear)), None)
        if width is None:
            raise ValueError(f"upcycle_module: {name} has no nn.Linear to infer d_model from; pass d_model")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ModuleMoE(expert=module, d_model=width, num_experts=num_experts, top_k=top_k,
                                         order=order, router_init_std=router_init_std))
    return [name for name, _ in targets]
