"""Parameter counts of a model: total, and active per token.

Active = total − Σ_MoE layers (1 − k/E) · (routed expert parameters), the parameters one token's
forward touches on average. k is the router's ``top_k`` (ReMoE's target for the ReLU router); for
expert choice it is the capacity factor, the mean number of experts per token (E·C/T). Embeddings
are counted once even when tied to the LM head.
"""

from __future__ import annotations

from torch import nn


def expected_experts_per_token(router: nn.Module) -> float:
    k = getattr(router, "top_k", None) or getattr(router, "capacity_factor", None)
    return float(k) if k else float(router.num_experts)


def param_counts(model: nn.Module) -> dict[str, int]:
    """{"total": ..., "active": ...} (unique parameters, so tied weights count once)."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0.0
    for layer in getattr(model, "moe_layers", []):
        E = layer.experts.num_experts
        k = min(expected_experts_per_token(layer.router), E)
        # experts that share some weights across experts (MPO's central cores) name the per-expert ones
        routed = getattr(layer.experts, "routed_parameters", layer.experts.parameters)()
        inactive += (1 - k / E) * sum(p.numel() for p in routed)
    return {"total": total, "active": round(total - inactive)}
