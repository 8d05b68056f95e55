"""Experts: stacked SwiGLU weights (swiglu.py) and the backends that dispatch a Routing to them:
GroupedExperts (default; sorted grouped GEMMs or a sorted loop), CapacityExperts (padded
[E, C, D] batched matmuls), LoopExperts (reference) and MPOExperts (matrix product operators with a shared
central core, dispatched as GroupedExperts)."""

from moe.experts.capacity import CapacityExperts
from moe.experts.grouped import GroupedExperts
from moe.experts.loop import LoopExperts
from moe.experts.mpo import MPOExperts
from moe.experts.quantized import QuantizedExperts
from moe.experts.swiglu import SwiGLUExperts

__all__ = ["CapacityExperts", "GroupedExperts", "LoopExperts", "MPOExperts", "QuantizedExperts", "SwiGLUExperts"]
