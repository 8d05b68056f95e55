"""Dense → MoE: upcycling methods, the ``init`` config group's initialisers, and ``upcycle_module``
for the MLPs of any ``nn.Module``."""

from moe.upcycle.init import FromCheckpoint, FromScratch, Upcycle
from moe.upcycle.module import ModuleMoE, upcycle_module

__all__ = ["FromCheckpoint", "FromScratch", "ModuleMoE", "Upcycle", "upcycle_module"]
