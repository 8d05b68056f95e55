"""Routing traces: which experts every held-out token selected, per MoE layer.

A trace keeps the selection as a dense boolean ``selected_TE`` (token t sent to expert e), built from
the flat assignments of :class:`moe.types.Routing`, so token choice, expert choice and dropped tokens
are all handled alike: a dropped assignment is simply not selected. Alongside it the trace keeps the
router's scores (for TopK score sum and entropy), each token's id and the domain of its sequence.
Memory is T·E bytes per layer (16k tokens × 64 experts = 1 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moe.metrics import RoutingAccumulator, load_stats
from moe.types import site_order


@dataclass
class RoutingTrace:
    """One MoE layer's routing of T tokens: ``selected_TE`` bool [T, E], ``probs_TE`` float32 [T, E],
    ``token_ids_T`` and ``domain_ids_T`` long [T]; ``stats`` are the per-layer statistics of
    :class:`moe.metrics.RoutingAccumulator` (routing_stats averaged over batches, load stats of the sum)."""

    selected_TE: torch.Tensor
    probs_TE: torch.Tensor
    token_ids_T: torch.Tensor
    domain_ids_T: torch.Tensor
    stats: dict[str, float]

    @property
    def num_experts(self) -> int:
        return self.selected_TE.shape[1]

    @property
    def load_E(self) -> torch.Tensor:
        """Assignments per expert over the whole trace."""
        return self.selected_TE.sum(0)

    def load_stats(self) -> dict[str, float]:
        """MaxVio (global, over the whole trace), load entropy and dead experts."""
        return load_stats(self.load_E)


def selection_matrix(token_ids_N: torch.Tensor, expert_ids_N: torch.Tensor, num_tokens: int,
                     num_experts: int) -> torch.Tensor:
    """Flat (token, expert) assignments → bool [T, E]."""
    selected_TE = torch.zeros(num_tokens, num_experts, dtype=torch.bool, device=token_ids_N.device)
    selected_TE[token_ids_N, expert_ids_N] = True
    return selected_TE


@torch.no_grad()
def collect_routing(model: nn.Module, input_ids: torch.Tensor, domain_ids: torch.Tensor, *,
                    batch_size: int = 8, device: str | torch.device = "cpu") -> dict[int, RoutingTrace]:
    """Run ``model`` (eval mode) over sequences ``input_ids`` [N, S] whose domains are ``domain_ids`` [N]
    and return a :class:`RoutingTrace` per MoE block index (empty for a dense model)."""
    was_training = model.training
    model.eval()
    parts: dict[int, dict[str, list]] = {}
    accumulated = RoutingAccumulator()
    tokens, domains = [], []
    for start in range(0, len(input_ids), batch_size):
        ids_BS = input_ids[start:start + batch_size].to(device)
        S = ids_BS.shape[1]
        out = model(ids_BS)
        accumulated.add(out.layer_aux)
        for layer, aux in out.layer_aux.items():
            routing = aux.routing
            part = parts.setdefault(layer, {"selected": [], "probs": []})
            part["selected"].append(selection_matrix(routing.token_ids_N, routing.expert_ids_N,
                                                     routing.num_tokens, routing.num_experts).cpu())
            part["probs"].append(routing.probs_TE.float().cpu())
        tokens.append(ids_BS.flatten().cpu())
        domains.append(domain_ids[start:start + batch_size].long().repeat_interleave(S))
    model.train(was_training)
    token_ids_T, domain_ids_T = torch.cat(tokens), torch.cat(domains)
    traces = {}
    stats = accumulated.per_layer(accumulated.sums.read())
    for layer, part in sorted(parts.items(), key=lambda item: site_order(item[0])):
        traces[layer] = RoutingTrace(torch.cat(part["selected"]), torch.cat(part["probs"]),
                                     token_ids_T, domain_ids_T, stats[layer])
    return traces
