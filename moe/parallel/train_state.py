"""What a checkpoint holds besides ``model.safetensors`` to resume a run, in one layout for every way a run
is sharded (one process, DDP, expert parallelism, FSDP):

    optimizer.pt      rank 0: the optimizer state keyed by parameter name, unsharded, and the LR scheduler
    rng/rank{r}.pt    each rank's RNG states (Python, NumPy, torch CPU and CUDA)

The optimizer state comes from ``torch.distributed.checkpoint.state_dict`` (``get_optimizer_state_dict``
with ``full_state_dict=True``): keyed by fully-qualified parameter name rather than by position, and
gathered whole from FSDP's shards, so it loads into a run of any world size and any layout
(``set_optimizer_state_dict`` shards it again). Expert-parallel shards are made whole around it by
moe/parallel/sharding.py. A rank that did not exist when the checkpoint was written keeps its seeded
RNG state. (Sharded files written by every rank, ``torch.distributed.checkpoint.save``, would avoid
gathering on rank 0, which a model larger than one host's memory needs; not done yet.)

Checkpoints written before this layout hold ``accelerate/`` (``accelerator.save_state``) instead; the
trainer still resumes them, except with FSDP.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

OPTIMIZER_FILE = "optimizer.pt"


def unwrapped_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def save_train_state(checkpoint: Path, model: nn.Module, optimizer, scheduler, rank: int) -> None:
    """A collective: every rank calls it (FSDP gathers the optimizer state); rank 0 writes optimizer.pt."""
    state = get_optimizer_state_dict(model, unwrapped_optimizer(optimizer),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"optimizer": state, "scheduler": scheduler.state_dict()}, checkpoint / OPTIMIZER_FILE)
    rng_dir = checkpoint / "rng"
    rng_dir.mkdir(exist_ok=True)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               rng_dir / f"rank{rank}.pt")


def load_train_state(checkpoint: Path, model: nn.Module, optimizer, scheduler, rank: int) -> None:
    """Every rank reads optimizer.pt (a file on storage all ranks see) and its own RNG file if there is one."""
    saved = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, unwrapped_optimizer(optimizer), saved["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = checkpoint / "rng" / f"rank{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
