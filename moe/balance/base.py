"""The balancer interface (docs/design.md, "The balancing contract").

A balancer is an ``nn.Module`` attached to one MoE layer:

- ``loss(routing, ctx)`` is called on every forward of its layer and returns the *unscaled* loss (or
  None for balancers that only update buffers). The model adds ``coeff × loss`` to the total loss and
  logs both.
- ``on_optimizer_step()`` is called once per optimizer step (only when ``accelerator.sync_gradients``)
  for bias updates and for resetting global-batch buffers.
- ``attach(router)`` is called once by the MoE layer that owns both, so a balancer that acts on the
  router (e.g. ``aux_free`` moving ``router.selection_bias_E``) can keep a reference to it.

Every aux loss is normalised so that a perfectly balanced router scores exactly 1.0 before the
coefficient; each subclass's docstring states its formula and scope.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.types import BalanceContext, Routing


class Balancer(nn.Module):
    """Base class: holds the coefficient; subclasses implement ``loss`` and/or ``on_optimizer_step``."""

    def __init__(self, *, coeff: float):
        super().__init__()
        if coeff < 0:
            raise ValueError(f"balancer coeff={coeff} must be >= 0")
        self.coeff = float(coeff)

    def attach(self, router: nn.Module) -> None:
        """Called by the owning MoELayer with its router; stateless balancers ignore it."""

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor | None:
        return None

    def on_optimizer_step(self) -> None:
        """Per-optimizer-step hook; stateless balancers have nothing to do."""

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"
