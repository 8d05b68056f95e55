"""Routers: map tokens x_TD to a :class:`moe.types.Routing`. One file per router family."""

from moe.routers.base import Router
from moe.routers.top_k import TopKRouter

__all__ = ["Router", "TopKRouter"]
