"""Sharded parameters, gradients and optimizer state (``parallel.fsdp=true``) with FSDP2
(``torch.distributed.fsdp.fully_shard``; ZeRO-3, Rajbhandari et al. 1910.02054).

Each block is its own FSDP unit (its parameters all-gathered just before its forward and backward,
freed after), the embedding, final norm and LM head form the root unit. Every parameter is split on
its first dimension, which for the stacked expert weights [E, ...] is the expert dimension: with E
divisible by the world size each rank stores whole experts. A block that shares parameters with
another (Zamba's shared attention block, registered in every block that applies it) cannot be a unit
of its own; such blocks stay in the root unit. Gradients are reduce-scattered to the mean over ranks,
the data-parallel mean DDP gives. The optimizer is built on the sharded parameters (DTensors), so each
rank keeps the AdamW moments of its shard only.
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard


def shard_with_fsdp(model: nn.Module) -> None:
    """fully_shard every block that shares no parameter with another, then the whole model (in place)."""
    owners: dict[int, int] = {}
    for i, block in enumerate(model.blocks):
        for param in block.parameters():
            owners.setdefault(id(param), i)
    for i, block in enumerate(model.blocks):
        if all(owners[id(param)] == i for param in block.parameters()):
            fully_shard(block)
    fully_shard(model)
    # FSDP2 warns about views among a unit's outputs because an in-place op on one would skip its hook;
    # the blocks return the residual stream and the model its logits, neither modified in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def gathered_state_dict(model: nn.Module) -> dict:
    """The whole model's state dict on rank 0 (other ranks: empty), gathered from the shards to the CPU
    (a collective: every rank calls it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
