"""Experts: stacked SwiGLU weights (swiglu.py) and the backends that dispatch a Routing to them:
GroupedExperts (default; sorted grouped GEMMs or a sorted loop), CapacityExperts (padded
[E, C, D] batched matmuls) and LoopExperts (reference)."""

from moe.experts.capacity import CapacityExperts
from moe.experts.grouped import GroupedExperts
from moe.experts.loop import LoopExperts
from moe.experts.swiglu import SwiGLUExperts

__all__ = ["CapacityExperts", "GroupedExperts", "LoopExperts", "SwiGLUExperts"]
