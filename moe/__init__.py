"""moe-lab: a research framework for Mixture-of-Experts language models."""

from moe.types import BalanceContext, Routing

__all__ = ["BalanceContext", "Routing"]
