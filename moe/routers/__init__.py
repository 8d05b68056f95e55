"""Routers: map tokens x_TD to a :class:`moe.types.Routing`. One file per router family."""

from moe.routers.base import Router
from moe.routers.cmoe import CMoERouter
from moe.routers.cosine import CosineRouter
from moe.routers.expert_choice import ExpertChoiceRouter
from moe.routers.hash import HashRouter
from moe.routers.noisy_top_k import NoisyTopKRouter
from moe.routers.random import RandomRouter
from moe.routers.relu import ReLURouter
from moe.routers.sigmoid import SigmoidRouter
from moe.routers.sinkhorn import SinkhornRouter
from moe.routers.top_k import TopKRouter

__all__ = [
    "CMoERouter",
    "CosineRouter",
    "ExpertChoiceRouter",
    "HashRouter",
    "NoisyTopKRouter",
    "RandomRouter",
    "ReLURouter",
    "Router",
    "SigmoidRouter",
    "SinkhornRouter",
    "TopKRouter",
]
