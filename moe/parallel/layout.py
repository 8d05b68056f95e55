"""How a run spreads its model over the ranks, chosen by the ``parallel`` node: the model replicated
(one process, or DDP through accelerate), its experts sharded (``parallel.expert``, DDP for the rest),
or everything sharded (``parallel.fsdp``). The trainer asks the layout to wrap the model, to finish the
gradients of a step, and for the unsharded views a checkpoint is written from and read into, so its
own code is the same for every layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_model
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from moe.parallel.config import ParallelConfig
from moe.parallel.expert_parallel import ExpertParallelGroup
from moe.parallel.fsdp import gathered_state_dict, shard_with_fsdp
from moe.parallel.sharding import clip_grad_norm, shard_experts, sync_expert_grads, unsharded_experts


class Layout:
    def __init__(self, parallel: ParallelConfig):
        self.expert_parallel = parallel.expert > 1
        self.expert_group_size = parallel.expert
        self.fsdp = parallel.fsdp

    def prepare(self, accelerator: Accelerator, model: nn.Module,
                make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
        """(model to call, optimizer, the bare model): sharded as the layout says, then through accelerate."""
        if self.fsdp:  # accelerate would wrap it in DDP: only the optimizer goes through it
            shard_with_fsdp(model)
            return model, accelerator.prepare(make_optimizer(model)), model
        if self.expert_parallel:  # the process group exists now; DDP must leave the shards alone
            sharded = shard_experts(model, ExpertParallelGroup.create(self.expert_group_size))
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sharded)
        wrapped, optimizer = accelerator.prepare(model, make_optimizer(model))
        return wrapped, optimizer, accelerator.unwrap_model(wrapped)

    def finish_gradients(self, accelerator: Accelerator, model: nn.Module, raw_model: nn.Module,
                         max_norm: float) -> torch.Tensor | None:
        """At an optimizer step: the expert shards' data-parallel mean, then clipping to ``max_norm``
        (0: none); returns the gradient norm before clipping (None without clipping)."""
        if self.expert_parallel:
            sync_expert_grads(raw_model)  # DDP averaged the rest
        if max_norm <= 0:
            return None
        if self.expert_parallel:  # the norm of the whole model's gradient, every shard counted once
            accelerator.unscale_gradients()
            return clip_grad_norm(raw_model, max_norm)
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor

    def reshard(self, model: nn.Module) -> None:
        """After forwards without a backward (evaluation): FSDP leaves the root unit's parameters
        gathered until the next backward, and the optimizer's sharded parameters are then not the
        module's; shard them again (before a checkpoint, whose state is named after the module's)."""
        if self.fsdp:
            model.reshard()

    @contextlib.contextmanager
    def unsharded(self, raw_model: nn.Module, optimizer) -> Iterator[None]:
        """Expert stacks and their optimizer state whole for the duration (a collective)."""
        with unsharded_experts(raw_model, optimizer) if self.expert_parallel else contextlib.nullcontext():
            yield

    def weights_to_save(self, raw_model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
        """Inside :meth:`unsharded`: a module holding the whole model's weights on rank 0 (FSDP gathers its
        shards into a fresh ``build()``; a collective), None on the other ranks under FSDP."""
        if not self.fsdp:
            return raw_model
        state = gathered_state_dict(raw_model)
        if not state:
            return None
        whole = build()
        whole.load_state_dict(state)
        return whole

    def load_weights(self, raw_model: nn.Module, file: Path, build: Callable[[], nn.Module]) -> None:
        """Inside :meth:`unsharded`: the whole model's weights from a safetensors file (FSDP: read into a fresh
        ``build()`` and scattered to the shards)."""
        if not self.fsdp:
            load_model(raw_model, str(file))
            return
        whole = build()
        load_model(whole, str(file))
        set_model_state_dict(raw_model, whole.state_dict(), options=StateDictOptions(full_state_dict=True))
