"""Experts: stacked SwiGLU weights and the backends that dispatch a Routing to them."""

from moe.experts.grouped import GroupedExperts
from moe.experts.loop import LoopExperts
from moe.experts.swiglu import SwiGLUExperts

__all__ = ["GroupedExperts", "LoopExperts", "SwiGLUExperts"]
