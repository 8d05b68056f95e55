"""CapacityExperts (padded [E, C, D] batched matmuls) against the loop reference: outputs and gradients
on awkward routings, padding options, the fixed-capacity overflow error and argument checks."""

from __future__ import annotations

import pytest
import torch
from routings import expert_outputs_and_grads as outputs_and_grads
from routings import random_routing

from moe.experts import CapacityExperts, LoopExperts
from moe.types import Routing

T, D, F_, E, K = 40, 16, 32, 6, 2
DIMS = {"num_experts": E, "d_model": D, "d_ff": F_}


def assert_matches_loop(experts: CapacityExperts, routing: Routing) -> None:
    reference = LoopExperts(**DIMS)
    experts.load_state_dict(reference.state_dict())
    x_TD, grad_TD = torch.randn(T, D), torch.randn(T, D)
    y_ref, grads_ref = outputs_and_grads(reference, x_TD, routing, grad_TD)
    y, grads = outputs_and_grads(experts, x_TD, routing, grad_TD)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for name, g, g_ref in zip(("x", "weights_N", "w_gate", "w_up", "w_down"), grads, grads_ref, strict=True):
        assert g is not None, f"no gradient for {name}"
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"grad {n}: {m}")
    unrouted_T = torch.ones(T, dtype=torch.bool)
    unrouted_T[routing.token_ids_N] = False
    assert torch.equal(y[unrouted_T], torch.zeros_like(y[unrouted_T]))
    idle_E = routing.tokens_per_expert_E == 0  # experts with only padded rows: exactly zero gradient
    for g in grads[2:]:
        assert torch.equal(g[idle_E], torch.zeros_like(g[idle_E]))


@pytest.mark.parametrize("case", ["topk", "skewed", "dropped", "empty"])
@pytest.mark.parametrize(
    "options",
    [{}, {"pad_multiple": 64}, {"pad_multiple": 3}, {"capacity_factor": 8.0}, {"capacity_factor": 6.0,
                                                                              "pad_multiple": 64}],
    ids=["busiest", "pad64", "pad3", "cf8", "cf6_pad64"],
)
def test_capacity_matches_loop_reference(case, options):
    assert_matches_loop(CapacityExperts(**DIMS, **options), make_routing(case))


@pytest.mark.parametrize(
    ("options", "case", "expected"),
    [
        ({}, "topk", None),  # the busiest expert's count
        ({"pad_multiple": 64}, "topk", 64),
        ({}, "empty", 0),
        ({"pad_multiple": 64}, "empty", 0),
        ({"capacity_factor": 1.5}, "empty", 20),  # ceil(2·40/6 · 1.5) = 20, fixed whatever the routing
        ({"capacity_factor": 1.5, "pad_multiple": 16}, "empty", 32),
    ],
)
def test_capacity_value(options, case, expected):
    routing = make_routing(case)
    busiest = int(routing.tokens_per_expert_E.max()) if case != "empty" else 0
    assert CapacityExperts(**DIMS, **options).capacity(routing) == (busiest if expected is None else expected)


def test_fixed_capacity_overflow_raises_clear_error():
    routing = make_routing("skewed")  # expert 0 gets about 0.6·T rows, capacity ceil(2·40/6 · 1.0) = 14
    assert int(routing.tokens_per_expert_E.max()) > 14
    experts = CapacityExperts(**DIMS, capacity_factor=1.0)
    with pytest.raises(RuntimeError, match=r"does not drop tokens: enable dropping in the model "
                                           r"\(model.capacity_factor"):
        experts(torch.randn(T, D), routing)


def test_bf16_autocast_runs_in_bf16_and_stays_close():
    routing, reference = make_routing("dropped"), LoopExperts(**DIMS)
    experts = CapacityExperts(**DIMS, pad_multiple=64)
    experts.load_state_dict(reference.state_dict())
    x_TD = torch.randn(T, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = experts(x_TD, routing).detach(), reference(x_TD, routing).detach()
    assert y.dtype == torch.bfloat16
    assert float((y.float() - y_ref.float()).norm() / y_ref.float().norm()) < 2e-2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pad_multiple": 0}, "experts.pad_multiple=0 must be an integer >= 1"),
        ({"pad_multiple": 1.5}, "experts.pad_multiple=1.5 must be an integer >= 1"),
        ({"capacity_factor": 0.0}, "experts.capacity_factor=0.0 must be a number > 0"),
        ({"capacity_factor": "1"}, "experts.capacity_factor='1' must be a number > 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CapacityExperts(**DIMS, **kwargs)


def test_repr_names_options():
    text = repr(CapacityExperts(**DIMS, pad_multiple=64, capacity_factor=1.25))
    assert "pad_multiple=64" in text and "capacity_factor=1.25" in text


def make_routing(case: str, T: int = T, E: int = E, K: int = K):
    return random_routing(case, T=T, E=E, K=K)
