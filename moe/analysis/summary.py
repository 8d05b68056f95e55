"""Per-layer routing summary of a set of traces: the numbers of ``eval/routing_report.py`` and
``eval/compare.py`` (see moe/analysis/specialisation.py and moe/metrics.py for the definitions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe.analysis.specialisation import (
    coactivation,
    domain_expert_frequency,
    routing_saturation,
    token_id_specialisation,
)
from moe.analysis.trace import RoutingTrace


@dataclass
class LayerSummary:
    """Scalars (``scalars``: MaxVio over the trace, load entropy, dead experts, I(domain; expert) in
    nats, TopK score sum, router entropy, token-id determinism and its baseline, I(id; expert)/H(expert),
    and routing saturation when an earlier trace was given) and matrices: load share per expert [E],
    p(expert | domain) [domains, E], co-activation [E, E]."""

    scalars: dict[str, float]
    load_share_E: torch.Tensor
    domain_freq_DE: torch.Tensor
    coactivation_EE: torch.Tensor


def summarise(traces: dict[int, RoutingTrace], domains: Sequence[str],
              earlier: dict[int, RoutingTrace] | None = None) -> dict[int, LayerSummary]:
    summaries = {}
    for layer, trace in traces.items():
        load_E = trace.load_E.double()
        freq_DE, domain_mi = domain_expert_frequency(trace.selected_TE, trace.domain_ids_T, len(domains))
        token = token_id_specialisation(trace.selected_TE, trace.token_ids_T)
        scalars = {
            **trace.load_stats(),
            "domain_mi": domain_mi,
            "topk_score_sum": trace.stats.get("topk_score_sum", float("nan")),
            "router_entropy": trace.stats.get("router_entropy", float("nan")),
            "token_determinism": token["determinism"],
            "token_determinism_baseline": token["baseline"],
            "token_mi_ratio": token["mi_ratio"],
        }
        if earlier is not None and layer in earlier:
            scalars["saturation"] = routing_saturation(earlier[layer].selected_TE, trace.selected_TE)
        summaries[layer] = LayerSummary(scalars, load_E / load_E.sum().clamp_min(1), freq_DE,
                                        coactivation(trace.selected_TE))
    return summaries


def mean_over_layers(summaries: dict[int, LayerSummary], name: str) -> float:
    values = [s.scalars[name] for s in summaries.values() if name in s.scalars]
    return sum(values) / len(values) if values else float("nan")
