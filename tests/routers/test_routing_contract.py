"""Every router config in configs/router/ honours the Routing contract (DESIGN.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import group_files, load_group_option

from moe.spec import instantiate

ROUTERS = [p.stem for p in group_files("router")]
T, D, E = 24, 16, 8


def make_router(name: str, **overrides):
    spec = {**load_group_option("router", name), **overrides}
    return instantiate(spec, "router")(d_model=D, num_experts=E)


@pytest.mark.parametrize("name", ROUTERS)
def test_routing_fields_shapes_and_counts(name):
    routing = make_router(name)(torch.randn(T, D))
    routing.validate()
    assert routing.num_tokens == T and routing.num_experts == E
    assert torch.allclose(routing.probs_TE.sum(-1), torch.ones(T))
    assert int(routing.tokens_per_expert_E.sum()) + int(routing.num_dropped) == round(routing.top_k * T)


@pytest.mark.parametrize("name", ROUTERS)
def test_routes_in_float32_under_bf16_autocast(name):
    router = make_router(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(torch.randn(T, D, dtype=torch.bfloat16))
    assert routing.logits_TE.dtype == torch.float32
    assert routing.probs_TE.dtype == torch.float32
    assert routing.weights_N.dtype == torch.float32


@pytest.mark.parametrize("name", ROUTERS)
def test_gate_weights_carry_the_router_gradient(name):
    router = make_router(name)
    routing = router(torch.randn(T, D))
    routing.weights_N.square().sum().backward()
    assert next(router.parameters()).grad.abs().sum() > 0


def test_validate_rejects_inconsistent_counts():
    routing = make_router("top_k")(torch.randn(T, D))
    routing.tokens_per_expert_E = routing.tokens_per_expert_E.flip(0) + 1
    with pytest.raises(ValueError, match="tokens_per_expert_E"):
        routing.validate()
