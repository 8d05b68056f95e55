"""Every router config in configs/router/ honours the Routing contract (docs/design.md) and trains."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import group_files, load_group_option

from moe.balance import SwitchAuxLoss
from moe.experts import GroupedExperts
from moe.models import build_decoder
from moe.spec import instantiate

ROUTERS = [p.stem for p in group_files("router")]
T, D, E, V = 24, 16, 8, 257


def make_router(name: str, **overrides):
    spec = {**load_group_option("router", name), **overrides}
    return instantiate(spec, "router")(d_model=D, num_experts=E)


def route(router, x_TD: torch.Tensor):
    """Call a router as MoELayer does: routers that route by token id also get the ids."""
    if getattr(router, "uses_token_ids", False):
        return router(x_TD, torch.arange(x_TD.shape[0]) * 7 % V)
    return router(x_TD)


@pytest.mark.parametrize("name", ROUTERS)
def test_routing_fields_shapes_and_counts(name):
    routing = route(make_router(name), torch.randn(T, D))
    routing.validate()  # shapes, dtypes, ids in range, tokens_per_expert_E == bincount(expert_ids_N)
    assert routing.num_tokens == T and routing.num_experts == E
    assert int(routing.tokens_per_expert_E.sum()) == routing.expert_ids_N.numel()
    assert torch.allclose(routing.probs_TE.sum(-1), torch.ones(T), atol=1e-5)
    assert (routing.weights_N >= 0).all() and routing.top_k > 0


@pytest.mark.parametrize("name", ROUTERS)
def test_routes_in_float32_under_bf16_autocast(name):
    router = make_router(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = route(router, torch.randn(T, D, dtype=torch.bfloat16))
    assert routing.logits_TE.dtype == torch.float32
    assert routing.probs_TE.dtype == torch.float32
    assert routing.weights_N.dtype == torch.float32


@pytest.mark.parametrize("name", ROUTERS)
def test_gate_weights_carry_the_router_gradient(name):
    router = make_router(name)
    params = [p for p in router.parameters() if p.requires_grad]
    if not params:
        pytest.skip(f"{name} has no learned parameters")
    routing = route(router, torch.randn(T, D))
    (routing.weights_N.square().sum() + routing.probs_TE.square().sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("name", ROUTERS)
def test_deterministic_in_eval_mode(name):
    router = make_router(name).eval()
    x_TD = torch.randn(T, D)
    first, second = route(router, x_TD), route(router, x_TD)
    assert torch.equal(first.expert_ids_N, second.expert_ids_N)
    assert torch.equal(first.weights_N, second.weights_N)


@pytest.mark.parametrize("name", ROUTERS)
def test_a_few_training_steps_stay_finite(name):
    spec = load_group_option("router", name)
    model = build_decoder(vocab_size=V, d_model=D, n_layers=2, n_heads=2, d_ff=32, max_seq_len=16, num_experts=E,
                      expert_d_ff=16, router=instantiate(spec, "router"), experts=GroupedExperts,
                      balancers={"switch_aux": functools.partial(SwitchAuxLoss)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, V, (4, 17))
    for _ in range(3):
        out = model(ids[:, :-1], ids[:, 1:])
        assert torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_validate_rejects_inconsistent_counts():
    routing = route(make_router("top_k"), torch.randn(T, D))
    routing.tokens_per_expert_E = routing.tokens_per_expert_E.flip(0) + 1
    with pytest.raises(ValueError, match="tokens_per_expert_E"):
        routing.validate()


def test_selection_bias_moves_selection_but_not_weights():
    router = make_router("top_k", top_k=1, order="softmax_then_topk")  # weights = the unbiased p
    x_TD = torch.randn(T, D)
    before = route(router, x_TD)
    with torch.no_grad():
        router.selection_bias_E[3] = 10.0  # every token now picks expert 3
    after = route(router, x_TD)
    assert after.expert_ids_N.tolist() == [3] * T
    assert torch.allclose(after.weights_N, after.probs_TE[:, 3])  # the weight is the unbiased score
    assert torch.equal(after.probs_TE, before.probs_TE)
