"""What experts learned: routing traces of a model over held-out data, and the specialisation,
co-activation and saturation measures computed from them (the eval/ scripts build reports on these)."""

from moe.analysis.params import param_counts
from moe.analysis.specialisation import (
    coactivation,
    domain_expert_frequency,
    mutual_information,
    routing_saturation,
    token_id_specialisation,
)
from moe.analysis.summary import LayerSummary, mean_over_layers, summarise
from moe.analysis.trace import RoutingTrace, collect_routing

__all__ = [
    "LayerSummary",
    "RoutingTrace",
    "coactivation",
    "collect_routing",
    "domain_expert_frequency",
    "mean_over_layers",
    "mutual_information",
    "param_counts",
    "routing_saturation",
    "summarise",
    "token_id_specialisation",
]
