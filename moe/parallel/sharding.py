"""A model whose MoE layers hold a shard of their experts (moe/parallel/expert_parallel.py), and the
unsharded view of it that checkpoints use.

- :func:`shard_experts` keeps, in every MoE FFN layer, rows ``ep.local_slice(E)`` of each expert stack
  (the model is built and initialised whole on every rank first, from the same seed, so the shards of
  all ranks together are exactly the EP=1 model) and routes the layer's dispatch through all-to-all.
- :func:`unsharded_experts` gathers the full stacks (and the optimizer's state of them) for the
  duration of a ``with``: inside, the model and optimizer look like EP=1's, so a checkpoint is saved in
  the unsharded layout and loads into a run of any world size and layout; on exit every rank keeps its
  rows again, of whatever the stacks hold then (e.g. a loaded checkpoint).
- :func:`sync_expert_grads` and :func:`clip_grad_norm` are the two places where expert gradients need
  more than DDP: DDP does not touch the expert shards (they differ between ranks), so their data-parallel
  mean and their share of the global gradient norm are computed here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from moe.layer import MoELayer
from moe.parallel.expert_parallel import ExpertParallelGroup, check_expert_backend


def moe_ffn_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE FFN layers of a model (not routed mixers: their experts are attention heads)."""
    return [block.ffn for block in getattr(model, "blocks", []) if isinstance(getattr(block, "ffn", None), MoELayer)]


def shard_experts(model: nn.Module, ep: ExpertParallelGroup) -> list[str]:
    """Keep this rank's experts in every MoE FFN layer; returns the sharded parameters' names."""
    layers = moe_ffn_layers(model)
    if not layers:
        raise ValueError("parallel.expert > 1 needs a model with MoE layers (model.num_experts > 0)")
    for layer in layers:
        check_expert_backend(layer.experts)
    names = []
    for name, module in model.named_modules():
        if any(module is layer for layer in layers):
            shard_layer_experts(module, ep)
            names.extend(f"{name}.experts.{param_name}" for param_name, _ in module.experts.named_parameters())
    return names


def shard_layer_experts(layer: MoELayer, ep: ExpertParallelGroup) -> None:
    """Keep this rank's rows of the layer's expert stacks and dispatch its tokens by all-to-all."""
    check_expert_backend(layer.experts)
    keep = ep.local_slice(layer.experts.num_experts)
    for param in layer.experts.parameters():
        param.data = param.data[keep].clone()
    layer.expert_parallel = ep


def sharded_parameters(model: nn.Module) -> list[tuple[nn.Parameter, ExpertParallelGroup]]:
    return [(param, layer.expert_parallel) for layer in moe_ffn_layers(model) if layer.expert_parallel is not None
            for param in layer.experts.parameters()]


@contextlib.contextmanager
def unsharded_experts(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
    """Within the ``with``, every expert stack (and its optimizer state) is whole on every rank (a
    collective: all ranks enter together). A no-op for a model without expert parallelism."""
    shards = sharded_parameters(model)
    states = _optimizer_states(optimizer)
    for param, ep in shards:
        param.data = ep.gather(param.data)
        state = states.get(param, {})
        for key, value in state.items():
            if _is_stack_state(value, param.shape[0] // ep.size):
                state[key] = ep.gather(value)
    try:
        yield
    finally:
        states = _optimizer_states(optimizer)  # anew: loading a checkpoint replaces the optimizer's state
        for param, ep in shards:
            keep = ep.local_slice(param.shape[0])
            param.data = param.data[keep].clone()
            state = states.get(param, {})
            for key, value in state.items():
                if _is_stack_state(value, param.shape[0] * ep.size):
                    state[key] = value[keep].clone()


def _optimizer_states(optimizer) -> dict:
    if optimizer is None:
        return {}
    return getattr(optimizer, "optimizer", optimizer).state  # accelerate wraps the torch optimizer


def _is_stack_state(value, rows: int) -> bool:
    """Whether an optimizer state entry is a per-element tensor of a stack with ``rows`` rows (Adam's
    moments), not a scalar (its step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows


def sync_expert_grads(model: nn.Module) -> None:
    """Each expert gradient → the data-parallel mean DDP gives the other parameters: the sum over the
    shard's replica group (ranks holding the same experts) divided by the world size."""
    for param, ep in sharded_parameters(model):
        if param.grad is None:
            continue
        if ep.replicas is not None:
            dist.all_reduce(param.grad, group=ep.replicas)
        param.grad.div_(ep.world_size)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over the whole model, expert shards included: the norm is that
    of the EP=1 model's gradient (replicated gradients counted once, each shard's once)."""
    shards = sharded_parameters(model)
    sharded = {id(param) for param, _ in shards}
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    zero = torch.zeros((), device=grads[0].device if grads else None)
    dense_sq = sum((g.detach().float().pow(2).sum() for p in model.parameters()
                    if (g := p.grad) is not None and id(p) not in sharded), zero)
    expert_sq = sum((p.grad.detach().float().pow(2).sum() for p, _ in shards if p.grad is not None), zero)
    if shards:
        dist.all_reduce(expert_sq, group=shards[0][1].group)
    total = (dense_sq + expert_sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total
