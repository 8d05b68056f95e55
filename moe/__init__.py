"""moe-lab: a research framework for Mixture-of-Experts language models."""

from moe.loading import load_model
from moe.quantize import quantize_experts
from moe.types import BalanceContext, Routing

__all__ = ["BalanceContext", "Routing", "load_model", "quantize_experts"]
