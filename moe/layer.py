"""MoELayer = router + routed experts (+ optional shared expert) + balancers (docs/design.md).

    y_t = Σ_{(t, e, w) ∈ routing} w · Expert_e(x_t)  [+ SharedExpert(x_t)]  [+ b]

The layer flattens [B, S, D] to T = B·S tokens, asks the router for a :class:`Routing`, drops the
assignments beyond each expert's capacity when a capacity factor is set (moe/dropping.py), lets the
experts dispatch it, and asks each balancer for its (unscaled) loss on the routing as dispatched.
It returns the output together with a :class:`LayerAux` so the model can add ``coeff × loss`` to the
objective and log everything per layer without any global state. ``route`` and ``balance`` are the two
halves every routed layer shares; the mixture of attention heads (moe/models/moa.py) routes and
balances through them with attention heads as its experts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from moe.balance.base import Balancer
from moe.balance.counts import all_reduce_sum
from moe.dropping import check_capacity_options, drop_over_capacity
from moe.parallel.expert_parallel import expert_parallel_forward
from moe.types import BalanceContext, ReadsTokenIds, Routing, supports


@dataclass
class LayerAux:
    """What one MoE layer reports for one forward: the routing and each balancer's unscaled loss.
    ``pending`` holds the balancers whose loss still waits for a data-parallel sum of their local
    stats (name → (balancer, ctx, stats)); ``finish_summed_losses`` turns them into losses."""

    routing: Routing
    losses: dict[str, torch.Tensor | None] = field(default_factory=dict)
    coeffs: dict[str, float] = field(default_factory=dict)
    pending: dict[str, tuple[Balancer, BalanceContext, torch.Tensor]] = field(default_factory=dict)


def finish_summed_losses(auxes: Iterable[LayerAux]) -> None:
    """Sum every pending balancer's local stats over the data-parallel group in one all-reduce (not
    one per layer) and fill in their losses, in the places ``MoELayer.forward`` reserved for them."""
    auxes = [aux for aux in auxes if aux.pending]
    items = [(aux, name, *entry) for aux in auxes for name, entry in aux.pending.items()]
    if not items:
        return
    summed = all_reduce_sum(torch.cat([stats for *_, stats in items]))
    for (aux, name, balancer, ctx, _), part in zip(items, summed.split([s.numel() for *_, s in items]), strict=True):
        aux.losses[name] = balancer.loss_from_sums(aux.routing, ctx, part)
    for aux in auxes:
        aux.pending.clear()


def step_balancers(layers: Iterable[MoELayer]) -> None:
    """Every balancer's per-optimizer-step hook, with one all-reduce for all their ``step_stats``
    (not one per layer)."""
    pending = []
    for layer in layers:
        for balancer in layer.balancers.values():
            stats = balancer.step_stats()
            if stats is None:
                balancer.on_optimizer_step()
            else:
                pending.append((balancer, stats))
    if pending:
        summed = all_reduce_sum(torch.cat([stats for _, stats in pending]))
        for (balancer, _), part in zip(pending, summed.split([s.numel() for _, s in pending]), strict=True):
            balancer.on_optimizer_step_from_sums(part)


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
        output_bias: bool = False,
    ):
        """``capacity_factor`` applies in training, ``eval_capacity_factor`` in eval mode (None: no
        dropping, e.g. dropless inference after capacity-limited training). ``output_bias`` adds one
        bias [D] to the layer's output, shared by all experts (JetMoE's MoE and MoA layers)."""
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
        self.bias_D = nn.Parameter(torch.zeros(router.d_model)) if output_bias else None
        # a function of the router's Routing that replaces it (SCMoE's weak pass, moe/scmoe.py); None: as routed
        self.routing_override = None
        # set by moe/parallel/sharding.py when this rank holds a shard of the experts: dispatch by all-to-all
        self.expert_parallel = None

    def forward(self, x_BSD: torch.Tensor, token_ids_BS: torch.Tensor | None = None, *,
                defer_sums: bool = False) -> tuple[torch.Tensor, LayerAux]:
        """``token_ids_BS`` (the input ids) reach routers that route by token id (``uses_token_ids``).
        ``defer_sums``: leave losses that need a data-parallel sum pending in the LayerAux, for the
        caller to finish with every other layer's in one all-reduce (``finish_summed_losses``)."""
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        routing = self.route(x_TD, token_ids_BS)
        if self.expert_parallel is None:
            y_TD = self.experts(x_TD, routing)
        else:
            y_TD = expert_parallel_forward(self.experts, x_TD, routing, self.expert_parallel)
        if self.shared_expert is not None:
            y_TD = y_TD + self.shared_expert(x_TD)
        return self.add_bias(y_TD).view(B, S, D), self.balance(routing, B, S, defer_sums=defer_sums)

    def route(self, x_TD: torch.Tensor, token_ids_BS: torch.Tensor | None) -> Routing:
        """The router's Routing of x_TD, less the assignments over capacity when a capacity factor is set."""
        if self.routes_by_token_id:
            if token_ids_BS is None:
                raise ValueError(f"{type(self.router).__name__} routes by token id: pass token_ids_BS")
            routing = self.router(x_TD, token_ids_BS.reshape(-1))
        else:
            routing = self.router(x_TD)
        if self.routing_override is not None:
            routing = self.routing_override(routing)
        capacity_factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if capacity_factor is not None:
            routing = drop_over_capacity(routing, capacity_factor=capacity_factor, drop_policy=self.drop_policy)
        return routing

    def add_bias(self, y_TD: torch.Tensor) -> torch.Tensor:
        return y_TD if self.bias_D is None else y_TD + self.bias_D.to(y_TD.dtype)

    def balance(self, routing: Routing, batch_size: int, seq_len: int, *, defer_sums: bool = False) -> LayerAux:
        """Each balancer's unscaled loss on the routing as dispatched (pending ones left for a
        data-parallel sum when ``defer_sums``)."""
        ctx = BalanceContext(batch_size=batch_size, seq_len=seq_len, layer_index=self.layer_index)
        aux = LayerAux(routing=routing)
        for name, balancer in self.balancers.items():
            stats = balancer.local_stats(routing, ctx)
            loss = balancer.loss(routing, ctx) if stats is None else None
            if stats is not None or loss is not None:
                aux.losses[name] = loss  # a pending loss keeps its place: the sum order stays the balancers'
                aux.coeffs[name] = balancer.coeff
            if stats is not None:
                aux.pending[name] = (balancer, ctx, stats)
        if not defer_sums:
            finish_summed_losses([aux])
        return aux

    def on_optimizer_step(self) -> None:
        step_balancers([self])
