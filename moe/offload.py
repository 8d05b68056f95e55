"""Expert offloading for inference (Eliseev & Mazur 2312.17238, "Fast inference of MoE language models with
offloading"): the routed experts live in a slower tier and only ``resident`` of each layer's experts are
held in fast memory, in an LRU cache; each layer speculatively prefetches the next layer's likely experts
by applying that layer's router to its own input (the hidden state changes little from layer to layer).

The slow tier (``tier``) is either a safetensors file on disk, read through safetensors' memory map
(``disk``, the default when the model runs on the CPU), or host memory (``host``, the default when it runs
on a GPU: each expert's tensors in pinned CPU memory, copied to the device when needed). A forward:

1. routes as usual; the experts it needs that are not resident are read from the file (a *miss*), the
   least recently used evicted to keep ``resident`` (the experts this forward needs stay until it ends);
2. runs the dispatch over the experts it needs only (their rows are contiguous after the sort);
3. prefetches into the next MoE layer's cache the top-k experts its router picks for this input.

The outputs are those of the resident model (tests/test_offload.py). ``OffloadStats`` counts hits, misses,
bytes read, and the prefetches' precision (prefetched experts that the next layer then used) and recall
(used experts that had been prefetched).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from moe.experts.permute import dispatch_over_used
from moe.experts.swiglu import PARAMETERS, SwiGLUExperts, compute_dtype


@dataclass
class OffloadStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    prefetched: int = 0         # experts read ahead of need
    prefetched_used: int = 0    # of them, used by the forward they were read for
    used_after_prefetch: int = 0  # experts used by forwards that followed a prefetch

    def summary(self, tokens: int) -> dict[str, float]:
        lookups = self.hits + self.misses
        return {"hit_rate": self.hits / lookups if lookups else float("nan"),
                "prefetch_precision": self.prefetched_used / self.prefetched if self.prefetched else float("nan"),
                "prefetch_recall": (self.prefetched_used / self.used_after_prefetch if self.used_after_prefetch
                                    else float("nan")),
                "bytes_read_per_token": self.bytes_read / tokens if tokens else float("nan")}


TIERS = ("auto", "disk", "host")


class DiskTier:
    """Experts' tensors ``{name}.{e}`` in a safetensors file, read on the device when needed."""

    def __init__(self, path: Path, names: tuple[str, ...], device: torch.device):
        self.path, self.names, self.device = path, names, device

    def read(self, e: int) -> tuple[torch.Tensor, ...]:
        with safe_open(str(self.path), framework="pt", device=str(self.device)) as f:
            return tuple(f.get_tensor(f"{name}.{e}") for name in self.names)


class HostTier:
    """Experts' tensors in CPU memory (pinned when CUDA is there, so the copy can overlap), copied to the
    device when needed."""

    def __init__(self, stacks: tuple[torch.Tensor, ...], device: torch.device):
        pin = torch.cuda.is_available()
        self.experts = [tuple((w[e].detach().cpu().clone().pin_memory() if pin else w[e].detach().cpu().clone())
                              for w in stacks) for e in range(stacks[0].shape[0])]
        self.device = device

    def read(self, e: int) -> tuple[torch.Tensor, ...]:
        return tuple(w.to(self.device, non_blocking=True) for w in self.experts[e])


class OffloadedExperts(nn.Module):
    """A layer's experts read on demand from a slow tier (:class:`DiskTier` or :class:`HostTier`),
    ``resident`` of them cached on the device."""

    def __init__(self, experts: SwiGLUExperts, tier: DiskTier | HostTier, resident: int, stats: OffloadStats):
        super().__init__()
        self.num_experts, self.activation = experts.num_experts, experts.activation
        self.d_model, self.d_ff = experts.d_model, experts.d_ff
        self.names = PARAMETERS[experts.activation]
        self.expert_outputs = experts.expert_outputs  # the same dispatch as the resident experts
        self.tier, self.resident, self.stats = tier, resident, stats
        self.cache: OrderedDict[int, tuple[torch.Tensor, ...]] = OrderedDict()
        self.prefetched: set[int] = set()
        self.next_layer: nn.Module | None = None  # the next MoE layer, whose experts this one prefetches

    def _read(self, e: int) -> tuple[torch.Tensor, ...]:
        weights = self.tier.read(e)
        self.stats.bytes_read += sum(w.numel() * w.element_size() for w in weights)
        return weights

    def fetch(self, experts: list[int], *, keep: set[int]) -> None:
        """Make ``experts`` resident (reading the missing ones), then evict the least recently used beyond
        ``resident`` that are not in ``keep``."""
        for e in experts:
            if e in self.cache:
                self.cache.move_to_end(e)
            else:
                self.cache[e] = self._read(e)
        for e in list(self.cache):
            if len(self.cache) <= self.resident:
                break
            if e not in keep:
                del self.cache[e]

    def prefetch(self, experts: list[int]) -> None:
        new = [e for e in experts if e not in self.cache]
        self.stats.prefetched += len(new)
        self.prefetched = set(new)
        self.fetch(new, keep=set(new))

    def forward(self, x_TD: torch.Tensor, routing) -> torch.Tensor:
        used = routing.tokens_per_expert_E.nonzero().flatten().tolist()
        for e in used:
            if e in self.cache:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
        if self.prefetched:
            self.stats.prefetched_used += len(self.prefetched & set(used))
            self.stats.used_after_prefetch += len(used)
            self.prefetched = set()
        self.fetch(used, keep=set(used))
        dtype = compute_dtype(x_TD)
        y_TD = dispatch_over_used(x_TD, routing, dtype, self.expert_outputs, lambda used_U: tuple(
            torch.stack([self.cache[e][k] for e in used]).to(dtype) for k in range(len(self.names))))
        if self.next_layer is not None:  # the next layer's router on this input: its likely experts
            with torch.no_grad():
                guess = self.next_layer.router(x_TD)
            self.next_layer.experts.prefetch(guess.tokens_per_expert_E.nonzero().flatten().tolist())
        return y_TD


def offload_experts(model: nn.Module, *, resident: int, store: str | Path | None = None, prefetch: bool = True,
                    tier: str = "auto") -> OffloadStats:
    """Move every MoE FFN's routed experts of ``model`` into the slow ``tier`` (``disk``: safetensors files in
    the new directory ``store``; ``host``: CPU memory; ``auto``: host when the model is on a GPU, else disk)
    and replace them by :class:`OffloadedExperts` keeping ``resident`` per layer. Returns the shared stats."""
    layers = [block.ffn for block in model.blocks if block.is_moe]
    if not layers:
        raise ValueError("the model has no routed FFN experts to offload (a dense model?)")
    if tier not in TIERS:
        raise ValueError(f"offload.tier={tier!r} is not one of {TIERS}")
    device = next(model.parameters()).device
    tier = ("host" if device.type == "cuda" else "disk") if tier == "auto" else tier
    for layer in layers:
        experts = layer.experts
        if not isinstance(experts, SwiGLUExperts) or not hasattr(experts, PARAMETERS[experts.activation][0]):
            raise ValueError(f"experts {type(experts).__name__} hold no plain weight stacks to offload")
        if getattr(layer.router, "top_k", None) is None:
            raise ValueError(f"offloading needs token-choice routing; {type(layer.router).__name__} is not")
        if isinstance(resident, bool) or not isinstance(resident, int) or not 1 <= resident <= experts.num_experts:
            raise ValueError(f"offload.experts={resident!r} must be an integer in [1, {experts.num_experts}] "
                             f"(the experts of a layer)")
    if tier == "disk":
        if store is None:
            raise ValueError("offload.tier=disk needs a store directory for the expert files")
        store = Path(store)
        if store.exists():
            raise FileExistsError(f"{store} exists; the expert store is written fresh (nothing is overwritten)")
        store.mkdir(parents=True)
    stats = OffloadStats()
    for i, layer in enumerate(layers):
        experts = layer.experts
        names = PARAMETERS[experts.activation]
        stacks = tuple(getattr(experts, name) for name in names)
        if tier == "disk":
            path = store / f"layer{i}.safetensors"
            save_file({f"{name}.{e}": w[e].detach().cpu().contiguous() for name, w in zip(names, stacks)
                       for e in range(experts.num_experts)}, str(path))
            slow = DiskTier(path, names, device)
        else:
            slow = HostTier(stacks, device)
        layer.experts = OffloadedExperts(experts, slow, resident, stats)
        for name in names:  # the weights now live in the slow tier only; the dispatch code stays
            delattr(experts, name)
    if prefetch:
        for layer, following in zip(layers, layers[1:]):
            if not following.routes_by_token_id:  # a hash router needs ids the hidden state lacks
                layer.experts.next_layer = following
    return stats
