"""What a checkpoint holds besides ``model.safetensors`` to resume a run, in one layout for every way a run
is sharded (one process, DDP, expert parallelism, FSDP):

    optimizer/        the optimizer state, a torch.distributed.checkpoint (DCP) directory
    train_state.pt    rank 0: the LR scheduler
    rng/rank{r}.pt    each rank's RNG states (Python, NumPy, torch CPU and CUDA)

The optimizer state is ``get_optimizer_state_dict`` of ``torch.distributed.checkpoint.state_dict``: keyed
by fully-qualified parameter name, not by position, and under FSDP made of each rank's shards, which
``torch.distributed.checkpoint.save`` writes from every rank in parallel (nothing is gathered on rank 0);
a tensor every rank holds whole (DDP, or the expert stacks that moe/parallel/sharding.py gathers around
this call) is written once. ``torch.distributed.checkpoint.load`` reads it back into whatever layout
and world size the resuming run has, cutting each tensor to the rank's shard, so any run resumes in any
layout; a single process loads it without a process group. A rank that did not exist when the checkpoint
was written keeps its seeded RNG state.

Checkpoints written before this layout hold ``accelerate/`` (``accelerator.save_state``) instead; the
trainer still resumes them, except with FSDP.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

TRAIN_STATE_FILE = "train_state.pt"  # its presence marks a checkpoint of this layout
OPTIMIZER_DIR = "optimizer"


def unwrapped_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def _single_process() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_without_process_group():
    """DCP warns on every call that it assumes one process when there is no process group: true here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_train_state(checkpoint: Path, model: nn.Module, optimizer, scheduler, rank: int) -> None:
    """A collective: every rank calls it and writes its part."""
    state = get_optimizer_state_dict(model, unwrapped_optimizer(optimizer))
    with _quiet_without_process_group():
        dcp.save(state, checkpoint_id=checkpoint / OPTIMIZER_DIR, no_dist=_single_process())
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict()}, checkpoint / TRAIN_STATE_FILE)
    rng_dir = checkpoint / "rng"
    rng_dir.mkdir(exist_ok=True)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               rng_dir / f"rank{rank}.pt")


def load_train_state(checkpoint: Path, model: nn.Module, optimizer, scheduler, rank: int) -> None:
    """A collective: every rank reads its part (from storage all ranks see) and its own RNG file if any."""
    optimizer = unwrapped_optimizer(optimizer)
    state = get_optimizer_state_dict(model, optimizer)  # the layout to fill: this run's shards
    with _quiet_without_process_group():
        dcp.load(state, checkpoint_id=checkpoint / OPTIMIZER_DIR, no_dist=_single_process())
    set_optimizer_state_dict(model, optimizer, state)
    scheduler.load_state_dict(torch.load(checkpoint / TRAIN_STATE_FILE, weights_only=False)["scheduler"])
    rng_file = checkpoint / "rng" / f"rank{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
