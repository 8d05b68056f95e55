"""Dense → MoE: upcycling methods and the ``init`` config group's initialisers."""

from moe.upcycle.init import FromCheckpoint, FromScratch, Upcycle

__all__ = ["FromCheckpoint", "FromScratch", "Upcycle"]
