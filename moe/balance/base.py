"""The balancer interface (docs/design.md, "The balancing contract").

A balancer is an ``nn.Module`` attached to one MoE layer:

- ``loss(routing, ctx)`` is called on every forward of its layer and returns the *unscaled* loss (or
  None for balancers that only update buffers). The model adds ``coeff × loss`` to the total loss and
  logs both.
- ``on_optimizer_step()`` is called once per optimizer step (only when ``accelerator.sync_gradients``)
  for bias updates and for resetting global-batch buffers.
- ``attach(router)`` is called once by the MoE layer that owns both, so a balancer that acts on the
  router (e.g. ``aux_free`` moving ``router.selection_bias_E``) can keep a reference to it.
- A loss that needs numbers summed over the data-parallel group (global-batch balancing) comes in two
  phases: ``local_stats(routing, ctx)`` returns this rank's numbers (1-D float64; None: nothing to
  sum, call ``loss``), and ``loss_from_sums(routing, ctx, summed)`` the loss from their sum. A
  :class:`~moe.models.DecoderLM` sums every layer's stats in one all-reduce per forward
  (moe/layer.py, ``finish_summed_losses``); ``loss`` alone does both phases with its own all-reduce.
  The per-step hook likewise: ``step_stats()`` (None: nothing to sum) and
  ``on_optimizer_step_from_sums(summed)``; the model sums all layers' in one all-reduce per optimizer
  step (``step_balancers``), and ``on_optimizer_step`` alone does both phases.

Every aux loss is normalised so that a perfectly balanced router scores exactly 1.0 before the
coefficient; each subclass's docstring states its formula and scope.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.balance.counts import all_reduce_sum
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

    def local_stats(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor | None:
        """This rank's numbers the loss needs summed over the data-parallel group (None: none)."""
        return None

    def loss_from_sums(self, routing: Routing, ctx: BalanceContext, summed: torch.Tensor) -> torch.Tensor:
        """The loss from the group's sum of ``local_stats`` (only for balancers that return some)."""
        raise NotImplementedError(f"{type(self).__name__} returns no local_stats")

    def on_optimizer_step(self) -> None:
        """Per-optimizer-step hook: both phases of the step sum (stateless balancers have nothing to do)."""
        stats = self.step_stats()
        if stats is not None:
            self.on_optimizer_step_from_sums(all_reduce_sum(stats))

    def step_stats(self) -> torch.Tensor | None:
        """This rank's numbers the step hook needs summed over the data-parallel group (None: none)."""
        return None

    def on_optimizer_step_from_sums(self, summed: torch.Tensor) -> None:
        """The step hook from the group's sum of ``step_stats`` (only for balancers that return some)."""
        raise NotImplementedError(f"{type(self).__name__} returns no step_stats")

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"
