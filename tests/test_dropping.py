"""Capacity and dropping: exact capacities, both drop policies, dropped tokens keep their residual."""

from __future__ import annotations

import pytest
import torch

from moe.dropping import drop_over_capacity, expert_capacity
from moe.experts import GroupedExperts
from moe.layer import MoELayer
from moe.routers import TopKRouter
from moe.types import Routing


def hand_routing() -> Routing:
    """6 tokens, top-1 over 3 experts: expert 0 gets tokens 0, 2, 3, 5 (probs .5 .9 .7 .6), expert 1 gets 1, 4."""
    probs_TE = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05],
                             [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    expert_ids_N = torch.tensor([0, 1, 0, 0, 1, 0])
    return Routing(token_ids_N=torch.arange(6), expert_ids_N=expert_ids_N,
                   weights_N=probs_TE[torch.arange(6), expert_ids_N], logits_TE=probs_TE.log(), probs_TE=probs_TE,
                   tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=3), num_dropped=0, top_k=1.0)


def test_capacity_formula():
    assert expert_capacity(num_tokens=6, top_k=1.0, num_experts=3, capacity_factor=1.0) == 2
    assert expert_capacity(num_tokens=4096, top_k=2.0, num_experts=8, capacity_factor=1.25) == 1280
    assert expert_capacity(num_tokens=10, top_k=2.0, num_experts=3, capacity_factor=1.0) == 7  # ceil(6.67)


def test_probs_policy_keeps_the_most_probable_assignments():
    dropped = drop_over_capacity(hand_routing(), capacity_factor=1.0, drop_policy="probs")  # C = 2
    dropped.validate()
    assert sorted(zip(dropped.token_ids_N.tolist(), dropped.expert_ids_N.tolist())) == [(1, 1), (2, 0), (3, 0), (4, 1)]
    assert dropped.num_dropped == 2 and dropped.tokens_per_expert_E.tolist() == [2, 2, 0]


def test_position_policy_keeps_the_earliest_tokens():
    dropped = drop_over_capacity(hand_routing(), capacity_factor=1.0, drop_policy="position")
    assert sorted(dropped.token_ids_N.tolist()) == [0, 1, 2, 4]
    assert dropped.num_dropped == 2


def test_a_large_capacity_factor_drops_nothing():
    routing = hand_routing()
    assert drop_over_capacity(routing, capacity_factor=2.0) is routing  # C = 4 >= the busiest expert


def test_dropped_tokens_keep_only_their_residual_and_eval_can_be_dropless():
    torch.manual_seed(0)
    router = TopKRouter(d_model=16, num_experts=4, top_k=1, order="softmax_then_topk")
    with torch.no_grad():
        router.scorer.weight_ED.zero_()
        router.scorer.weight_ED[2, 0] = 5.0  # tokens with x_0 > 0 all pick expert 2
    experts = GroupedExperts(num_experts=4, d_model=16, d_ff=16)
    layer = MoELayer(router=router, experts=experts, capacity_factor=1.0, eval_capacity_factor=None)
    x_BSD = torch.randn(1, 32, 16)
    x_BSD[0, :, 0] = x_BSD[0, :, 0].abs()  # everyone wants expert 2: capacity C = 8 keeps 8 of 32
    y_BSD, aux = layer.train()(x_BSD)
    assert aux.routing.num_dropped == 24 and aux.routing.tokens_per_expert_E.tolist() == [0, 0, 8, 0]
    kept = torch.zeros(32, dtype=torch.bool)
    kept[aux.routing.token_ids_N] = True
    assert (y_BSD[0, ~kept] == 0).all() and (y_BSD[0, kept] != 0).any()
    _, eval_aux = layer.eval()(x_BSD)
    assert eval_aux.routing.num_dropped == 0 and eval_aux.routing.tokens_per_expert_E[2] == 32


@pytest.mark.parametrize(("kwargs", "message"), [({"capacity_factor": 0.0}, "capacity_factor=0.0 must be > 0"),
                                                 ({"drop_policy": "random"}, "drop_policy='random' is not one of")])
def test_bad_capacity_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoELayer(router=TopKRouter(d_model=8, num_experts=2, order="softmax_then_topk"),
                 experts=GroupedExperts(num_experts=2, d_model=8, d_ff=8), **kwargs)
