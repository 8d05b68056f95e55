"""Routing statistics, logged per MoE layer at every log step and at eval, and the device-side sums
that collect them (and the losses) between two reads.

From expert loads (counts of dispatched assignments per expert, summed over a window):

- MaxVio (Wang et al. 2408.15664, eq. 4): (max_i c_i − mean_i c_i) / mean_i c_i. 0 when balanced;
  E − 1 when one expert takes everything. Over one batch it is MaxVio_batch; over a whole validation
  set, MaxVio_global.
- load entropy: H(c/Σc) / log E, the entropy of the load distribution normalised to [0, 1]
  (1 = perfectly even, 0 = one expert takes all).
- dead experts: experts that received no assignment in the window.

From one forward's scores (``routing_stats``, averaged over micro-steps by the caller):

- router entropy: mean_t H(p_t) / log E, the normalised entropy of each token's score distribution
  (1 = undecided, 0 = one-hot).
- top-1/top-2 margin: mean_t (p_t,(1) − p_t,(2)), how decisive the top choice is.
- TopK score sum: mean_t Σ_{i ∈ top-k(p_t)} p_t,i (Qiu et al. 2501.11873 §specialisation; k/E for a
  uniform router, 1 for a fully confident one).
- drop rate: dropped / (dispatched + dropped) assignments; unrouted: share of tokens with no expert.
- experts per token: dispatched assignments / T (k for dropless top-k; it varies under ReLU routing).

Reading a GPU tensor's value (``float()``, ``.item()``, ``.tolist()``) makes the host wait for the
device. The statistics are therefore computed as tensors and summed where they live
(:class:`RunningSums`); training reads them once per log step and evaluation once per pass, in one
transfer. Training, evaluation and routing traces share :class:`RoutingAccumulator`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping
from typing import Any

import torch

from moe.balance.counts import all_reduce_sum, distributed_world_size
from moe.types import Routing, site_order


def load_stats(tokens_per_expert_E: torch.Tensor) -> dict[str, float]:
    """MaxVio, normalised load entropy and dead-expert count of one load vector [E]."""
    load_E = tokens_per_expert_E.detach().double().cpu()
    E = load_E.numel()
    total = float(load_E.sum())
    if total == 0:
        return {"max_vio": 0.0, "load_entropy": 0.0, "dead_experts": float(E)}
    share_E = load_E / total
    entropy = float(-(share_E[share_E > 0] * share_E[share_E > 0].log()).sum())
    mean = total / E
    return {
        "max_vio": (float(load_E.max()) - mean) / mean,
        "load_entropy": entropy / math.log(E) if E > 1 else 1.0,
        "dead_experts": float((load_E == 0).sum()),
    }


@torch.no_grad()
def routing_stats(routing: Routing) -> dict[str, torch.Tensor]:
    """Score-based statistics of one forward (see the module docstring), as 0-dim float64 tensors on
    the routing's device: computing them never waits for the device."""
    probs_TE = routing.probs_TE.detach().float()
    T, E = probs_TE.shape
    if T == 0:
        return {}
    entropy_T = -(probs_TE * probs_TE.clamp_min(1e-12).log()).sum(-1)
    k = min(E, max(1, round(routing.top_k)))
    top_TK = probs_TE.topk(min(E, max(k, 2)), dim=-1).values
    dispatched = routing.expert_ids_N.numel()  # a shape: known on the host
    dropped = torch.as_tensor(routing.num_dropped, dtype=torch.float64, device=probs_TE.device)
    routed_T = torch.zeros(T, dtype=torch.bool, device=probs_TE.device)
    routed_T[routing.token_ids_N] = True
    constant = probs_TE.new_tensor  # a host number as a device tensor, so every value can be summed there
    stats = {
        "router_entropy": entropy_T.mean() / math.log(E) if E > 1 else constant(0.0),
        "top1_top2_margin": (top_TK[:, 0] - top_TK[:, 1]).mean() if E > 1 else constant(1.0),
        "topk_score_sum": top_TK[:, :k].sum(-1).mean(),
        "drop_rate": dropped / (dispatched + dropped).clamp_min(1.0),
        "unrouted_tokens": 1.0 - routed_T.float().mean(),
        "experts_per_token": constant(dispatched / T),
    }
    return {name: value.double() for name, value in stats.items()}


class RunningSums:
    """Named sums (float64) kept on the device of their values; :meth:`read` brings all of them to the
    host in one transfer — the only point where the host waits for the device."""

    def __init__(self):
        self._sums: dict[Hashable, torch.Tensor] = {}

    def add(self, key: Hashable, value: torch.Tensor | float) -> None:
        value = value.detach().double() if isinstance(value, torch.Tensor) else torch.tensor(float(value),
                                                                                           dtype=torch.float64)
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    def read(self, mean_over_ranks: bool = False) -> dict[Hashable, Any]:
        """Each sum as a float (0-dim) or a list of floats, from one ``tolist()`` of them all.
        ``mean_over_ranks``: each sum's mean over the data-parallel ranks, in one all-reduce (a collective:
        every rank must read, with the same keys)."""
        if not self._sums:
            return {}
        # gather where the values live (a GPU), so only the final tolist() crosses to the host
        device = next((v.device for v in self._sums.values() if v.device.type != "cpu"), torch.device("cpu"))
        flat = torch.cat([value.to(device).reshape(-1) for value in self._sums.values()])
        if mean_over_ranks:
            flat = all_reduce_sum(flat) / distributed_world_size()
        flat = flat.tolist()
        values, start = {}, 0
        for key, value in self._sums.items():
            n = value.numel()
            values[key] = flat[start] if value.dim() == 0 else flat[start:start + n]
            start += n
        return values


class RoutingAccumulator:
    """Per-layer expert loads and score statistics of many forwards, summed in a :class:`RunningSums`
    (its own, or one shared with the losses so that a single read serves both)."""

    def __init__(self, sums: RunningSums | None = None):
        self.sums = RunningSums() if sums is None else sums
        self.forwards: dict[int, int] = {}

    def add(self, layer_aux: Mapping[int, Any]) -> None:
        """One forward's ``ModelOutput.layer_aux`` (MoE block index → LayerAux)."""
        for layer, aux in layer_aux.items():
            self.forwards[layer] = self.forwards.get(layer, 0) + 1
            self.sums.add(("load_E", layer), aux.routing.tokens_per_expert_E)
            for stat, value in routing_stats(aux.routing).items():
                self.sums.add((stat, layer), value)

    def per_layer(self, values: Mapping[Hashable, Any]) -> dict[int, dict[str, float]]:
        """From ``sums.read()``: each layer's score statistics averaged over its forwards, and the load
        statistics of its summed loads."""
        layers = {}
        for layer, forwards in sorted(self.forwards.items(), key=lambda item: site_order(item[0])):
            stats = {key[0]: value / forwards for key, value in values.items()
                     if isinstance(key, tuple) and key[1] == layer and key[0] != "load_E"}
            stats.update(load_stats(torch.tensor(values[("load_E", layer)], dtype=torch.float64)))
            layers[layer] = stats
        return layers

    def metrics(self, values: Mapping[Hashable, Any], prefix: str = "") -> dict[str, float]:
        """``{prefix}layer{i}/{stat}`` for every layer and ``{prefix}moe/{stat}``, their mean over layers."""
        layers = self.per_layer(values)
        metrics = {f"{prefix}layer{layer}/{stat}": value for layer, stats in layers.items()
                   for stat, value in stats.items()}
        if layers:
            for stat in next(iter(layers.values())):
                metrics[f"{prefix}moe/{stat}"] = sum(stats[stat] for stats in layers.values()) / len(layers)
        return metrics


class MetricWindow:
    """Losses and routing statistics of the training micro-steps between two log steps, summed on the
    device: ``add`` never waits for the device, ``summary`` reads everything in one transfer."""

    def __init__(self):
        self.sums = RunningSums()
        self.routing = RoutingAccumulator(self.sums)
        self.micro_steps = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, out, tokens: int) -> None:
        self.micro_steps += 1
        self.tokens += tokens
        for key, value in (("loss", out.loss), ("lm_loss", out.lm_loss), ("aux_loss", out.aux_loss)):
            self.sums.add(key, value)
        for key, loss in out.aux_losses.items():
            self.sums.add(key, loss)
            self.sums.add(f"{key}_scaled", out.aux_coeffs[key] * loss)
        self.routing.add(out.layer_aux)

    def summary(self) -> dict[str, float]:
        """Window means over micro-steps and data-parallel ranks (a collective); per-layer routing statistics
        as layer{i}/{stat}, their mean over layers as moe/{stat}. A rank's loads are averaged, not summed:
        the load statistics are scale-free, so they equal those of all ranks' tokens together."""
        values = self.sums.read(mean_over_ranks=True)
        metrics = {key: value / max(1, self.micro_steps) for key, value in values.items() if isinstance(key, str)}
        return {**metrics, **self.routing.metrics(values)}
