"""Every expert backend gives the loop reference's outputs and gradients, on awkward routings too."""

from __future__ import annotations

import pytest
import torch

from moe.experts import GroupedExperts, LoopExperts
from moe.models import SwiGLU
from moe.types import Routing

T, D, F_, E, K = 40, 16, 32, 6, 2


def make_routing(case: str) -> Routing:
    """Random top-k routings: 'topk' (all tokens), 'skewed' (experts 4, 5 empty), 'dropped' (a third
    of the assignments removed, some tokens keep none), 'empty' (N = 0)."""
    expert_ids_TK = torch.rand(T, E).topk(K, dim=-1).indices
    if case == "skewed":
        expert_ids_TK = expert_ids_TK % 4
        expert_ids_TK[:, 1] = (expert_ids_TK[:, 0] + 1) % 4
    token_ids_N = torch.arange(T).repeat_interleave(K)
    expert_ids_N = expert_ids_TK.reshape(-1)
    keep_N = torch.ones(T * K, dtype=torch.bool)
    if case == "dropped":
        keep_N = torch.rand(T * K) > 0.33
    if case == "empty":
        keep_N[:] = False
    logits_TE = torch.randn(T, E)
    routing = Routing(
        token_ids_N=token_ids_N[keep_N], expert_ids_N=expert_ids_N[keep_N],
        weights_N=torch.rand(int(keep_N.sum())).requires_grad_(), logits_TE=logits_TE,
        probs_TE=logits_TE.softmax(-1), tokens_per_expert_E=torch.bincount(expert_ids_N[keep_N], minlength=E),
        num_dropped=int((~keep_N).sum()), top_k=float(K),
    )
    routing.validate()
    return routing


BACKENDS = [
    pytest.param(lambda: GroupedExperts(num_experts=E, d_model=D, d_ff=F_, impl="grouped_mm"), id="grouped_mm"),
    pytest.param(lambda: GroupedExperts(num_experts=E, d_model=D, d_ff=F_, impl="sorted_loop"), id="sorted_loop"),
    pytest.param(lambda: GroupedExperts(num_experts=E, d_model=D, d_ff=F_, impl="auto"), id="auto"),
]


def outputs_and_grads(experts, x_TD, routing):
    x_TD = x_TD.clone().requires_grad_()
    routing.weights_N.grad = None
    y_TD = experts(x_TD, routing)
    y_TD.float().pow(2).sum().backward()
    grads = [x_TD.grad, routing.weights_N.grad] + [p.grad for p in experts.parameters()]
    return y_TD.detach(), [torch.zeros(1) if g is None else g for g in grads]


@pytest.mark.parametrize("case", ["topk", "skewed", "dropped", "empty"])
@pytest.mark.parametrize("make_backend", BACKENDS)
def test_backend_matches_loop_reference_fp32(make_backend, case):
    routing = make_routing(case)
    reference, backend = LoopExperts(num_experts=E, d_model=D, d_ff=F_), make_backend()
    backend.load_state_dict(reference.state_dict())
    x_TD = torch.randn(T, D)
    y_ref, grads_ref = outputs_and_grads(reference, x_TD, routing)
    y, grads = outputs_and_grads(backend, x_TD, routing)
    assert torch.allclose(y, y_ref, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-5)
    if case == "dropped":  # tokens that kept no assignment get exactly zero
        unrouted = torch.ones(T, dtype=torch.bool)
        unrouted[routing.token_ids_N] = False
        assert unrouted.any() and y[unrouted].abs().max() == 0


@pytest.mark.parametrize("make_backend", BACKENDS)
def test_backend_matches_loop_reference_under_bf16_autocast(make_backend):
    routing = make_routing("topk")
    reference, backend = LoopExperts(num_experts=E, d_model=D, d_ff=F_), make_backend()
    backend.load_state_dict(reference.state_dict())
    x_TD = torch.randn(T, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, _ = outputs_and_grads(reference, x_TD, routing)
        y, _ = outputs_and_grads(backend, x_TD, routing)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert torch.allclose(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("experts_cls", [LoopExperts, GroupedExperts])
def test_identical_experts_with_weights_summing_to_one_equal_one_dense_ffn(experts_cls):
    dense = SwiGLU(d_model=D, d_ff=F_)
    experts = experts_cls(num_experts=E, d_model=D, d_ff=F_)
    with torch.no_grad():
        experts.w_gate_EDF.copy_(dense.gate.weight.T.expand(E, D, F_))
        experts.w_up_EDF.copy_(dense.up.weight.T.expand(E, D, F_))
        experts.w_down_EFD.copy_(dense.down.weight.T.expand(E, F_, D))
    routing = make_routing("topk")
    weights_TK = torch.rand(T, K).softmax(-1)
    routing.weights_N = weights_TK.reshape(-1)
    x_TD = torch.randn(T, D)
    assert torch.allclose(experts(x_TD, routing), dense(x_TD), atol=1e-6)


def test_sorted_loop_is_used_when_rows_break_grouped_mm_alignment():
    assert GroupedExperts(num_experts=2, d_model=6, d_ff=8).resolved_impl(torch.float32) == "sorted_loop"
    assert GroupedExperts(num_experts=2, d_model=8, d_ff=12).resolved_impl(torch.bfloat16) == "sorted_loop"
    odd = GroupedExperts(num_experts=E, d_model=6, d_ff=10)
    reference = LoopExperts(num_experts=E, d_model=6, d_ff=10)
    odd.load_state_dict(reference.state_dict())
    routing, x_TD = make_routing("topk"), torch.randn(T, 6)
    assert torch.allclose(odd(x_TD, routing), reference(x_TD, routing), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 0}, "experts.num_experts=0 must be an integer >= 1"),
        ({"d_ff": -3}, "experts.d_ff=-3"),
        ({"impl": "cuda"}, "experts.impl='cuda' is not one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupedExperts(**{"num_experts": 2, "d_model": 8, "d_ff": 8, **kwargs})

