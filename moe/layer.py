"""MoELayer = router + routed experts (+ optional shared expert) + balancers (docs/design.md).

    y_t = Σ_{(t, e, w) ∈ routing} w · Expert_e(x_t)  [+ SharedExpert(x_t)]

The layer flattens [B, S, D] to T = B·S tokens, asks the router for a :class:`Routing`, drops the
assignments beyond each expert's capacity when a capacity factor is set (moe/dropping.py), lets the
experts dispatch it, and asks each balancer for its (unscaled) loss on the routing as dispatched.
It returns the output together with a :class:`LayerAux` so the model can add ``coeff × loss`` to the
objective and log everything per layer without any global state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from moe.balance.base import Balancer
from moe.dropping import check_capacity_options, drop_over_capacity
from moe.types import BalanceContext, ReadsTokenIds, Routing, supports


@dataclass
class LayerAux:
    """What one MoE layer reports for one forward: the routing and each balancer's unscaled loss."""

    routing: Routing
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    coeffs: dict[str, float] = field(default_factory=dict)


class MoELayer(nn.Module):
    def __init__(
        self,
        *,
        router: nn.Module,
        experts: nn.Module,
        balancers: Mapping[str, Balancer] | None = None,
        shared_expert: nn.Module | None = None,
        layer_index: int = 0,
        capacity_factor: float | None = None,
        eval_capacity_factor: float | None = None,
        drop_policy: str = "probs",
    ):
        """``capacity_factor`` applies in training, ``eval_capacity_factor`` in eval mode (None: no
        dropping, e.g. dropless inference after capacity-limited training)."""
        super().__init__()
        check_capacity_options(capacity_factor, drop_policy)
        check_capacity_options(eval_capacity_factor, drop_policy)
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.drop_policy = drop_policy
        self.router = router
        # decided once here, not on every forward
        self.routes_by_token_id = supports(router, ReadsTokenIds) and bool(router.uses_token_ids)
        self.experts = experts
        self.balancers = nn.ModuleDict(dict(balancers or {}))
        for balancer in self.balancers.values():
            balancer.attach(router)
        self.shared_expert = shared_expert
        self.layer_index = layer_index

    def forward(self, x_BSD: torch.Tensor, token_ids_BS: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerAux]:
        """``token_ids_BS`` (the input ids) reach routers that route by token id (``uses_token_ids``)."""
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        if self.routes_by_token_id:
            if token_ids_BS is None:
                raise ValueError(f"{type(self.router).__name__} routes by token id: pass token_ids_BS")
            routing = self.router(x_TD, token_ids_BS.reshape(B * S))
        else:
            routing = self.router(x_TD)
        capacity_factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if capacity_factor is not None:
            routing = drop_over_capacity(routing, capacity_factor=capacity_factor, drop_policy=self.drop_policy)
        y_TD = self.experts(x_TD, routing)
        if self.shared_expert is not None:
            y_TD = y_TD + self.shared_expert(x_TD)
        ctx = BalanceContext(batch_size=B, seq_len=S, layer_index=self.layer_index)
        aux = LayerAux(routing=routing)
        for name, balancer in self.balancers.items():
            loss = balancer.loss(routing, ctx)
            if loss is not None:
                aux.losses[name] = loss
                aux.coeffs[name] = balancer.coeff
        return y_TD.view(B, S, D), aux

    def on_optimizer_step(self) -> None:
        for balancer in self.balancers.values():
            balancer.on_optimizer_step()
