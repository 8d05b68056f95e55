"""The ``parallel`` config node and the checks of a layout against the launch, before anything is built.

A run launched by ``torchrun`` (or ``accelerate launch``) finds its world size W in the environment
(``WORLD_SIZE``); every process is a data-parallel rank. ``parallel.expert`` = N > 1 splits each MoE
layer's routed experts over groups of N consecutive ranks (moe/parallel/expert_parallel.py);
``parallel.fsdp`` shards every parameter and its optimizer state over the ranks (moe/parallel/fsdp.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from moe.train_config import from_mapping

EXPERT_PARALLEL_BACKEND = "moe.experts.GroupedExperts"  # its expert_outputs runs on the rows a rank receives


@dataclass(frozen=True)
class ParallelConfig:
    expert: int
    fsdp: bool

    def __post_init__(self):
        if isinstance(self.expert, bool) or not isinstance(self.expert, int) or self.expert < 1:
            raise ValueError(f"parallel.expert={self.expert!r} must be an integer >= 1 (1: no expert parallelism)")


def launched_world_size() -> int:
    """W of the launch (``WORLD_SIZE``, set by torchrun and accelerate launch); 1 for a plain ``python``."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"WORLD_SIZE={value!r} in the environment is not a positive integer")
    return int(value)


def checked_parallel(config: dict[str, Any], world_size: int) -> ParallelConfig:
    """The ``parallel`` node, checked against the world size, the model and the batch; raises ValueError
    naming the key and what is allowed."""
    parallel = from_mapping(ParallelConfig, dict(config["parallel"]), "parallel")
    batch_size = config["trainer"]["batch_size"]
    if isinstance(batch_size, int) and batch_size % world_size:
        raise ValueError(f"trainer.batch_size={batch_size} (the global micro-batch) is not divisible by the "
                         f"{world_size} processes of this launch; use a multiple of {world_size}")
    if parallel.expert > 1:
        num_experts = config["model"].get("num_experts") or 0
        if isinstance(num_experts, bool) or not isinstance(num_experts, int):
            raise ValueError(f"model.num_experts={num_experts!r} must be an integer")
        if world_size % parallel.expert:
            raise ValueError(f"parallel.expert={parallel.expert} does not divide the {world_size} processes of this "
                             f"launch; use a divisor of {world_size}")
        if not num_experts or num_experts % parallel.expert:
            raise ValueError(f"parallel.expert={parallel.expert} does not divide model.num_experts={num_experts}; "
                             f"use a divisor of {num_experts}")
        backend = (config.get("experts") or {}).get("_target_")
        if backend != EXPERT_PARALLEL_BACKEND:
            raise ValueError(f"parallel.expert={parallel.expert} needs experts=grouped or experts=sorted_loop "
                             f"({EXPERT_PARALLEL_BACKEND}); experts._target_={backend!r}")
    if parallel.fsdp:
        if world_size == 1:
            raise ValueError("parallel.fsdp=true needs a multi-process launch (torchrun --nproc_per_node N "
                             "train.py ...): one process has nobody to share its parameters with")
        if parallel.expert > 1:
            raise ValueError(f"parallel.fsdp=true with parallel.expert={parallel.expert}: choose one (FSDP already "
                             f"splits each expert stack on its expert dimension)")
        if config["trainer"].get("compile_moe"):
            raise ValueError("parallel.fsdp=true with trainer.compile_moe=true is not supported; set one to false")
    return parallel
