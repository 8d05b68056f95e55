"""ExpertChoiceRouter (Zhou et al. 2022) against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from moe.routers import ExpertChoiceRouter
from moe.routers import expert_choice as expert_choice_module


@pytest.fixture(autouse=True)
def _quiet(recwarn):
    """The causality warning is tested below; elsewhere it is just noise."""


def test_each_expert_picks_exactly_its_top_c_tokens():
    router = ExpertChoiceRouter(d_model=3, num_experts=3, capacity_factor=1.0)
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(3))
    x_TD = torch.tensor(
        [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
    )
    routing = router(x_TD)
    S = x_TD.softmax(-1)
    C = math.ceil(1.0 * 6 / 3)
    assert C == 2
    assert routing.tokens_per_expert_E.tolist() == [C] * 3
    assert routing.expert_ids_N.tolist() == [0, 0, 1, 1, 2, 2]
    for e in range(3):
        picked = set(routing.token_ids_N[routing.expert_ids_N == e].tolist())
        assert picked == set(S[:, e].topk(C).indices.tolist())
    assert torch.allclose(routing.weights_N, S[routing.token_ids_N, routing.expert_ids_N])
    assert routing.top_k == pytest.approx(3 * C / 6)
    assert routing.num_dropped == 0
    assert routing.token_ids_N.tolist() == [0, 2, 1, 2, 3, 4]  # token 5 (all zeros) is picked by no expert
    routing.validate()


def test_capacity_is_clamped_to_the_number_of_tokens():
    router = ExpertChoiceRouter(d_model=4, num_experts=2, capacity_factor=8.0)
    routing = router(torch.randn(3, 4))
    assert router.capacity(3) == 3 and routing.tokens_per_expert_E.tolist() == [3, 3]
    assert sorted(routing.token_ids_N.tolist()) == [0, 0, 1, 1, 2, 2]


def test_gradient_reaches_the_router_through_the_weights():
    router = ExpertChoiceRouter(d_model=4, num_experts=4)
    router(torch.randn(8, 4)).weights_N.sum().backward()
    assert router.scorer.weight_ED.grad.abs().sum() > 0
    assert not hasattr(router, "selection_bias_E")  # a per-expert constant cannot reorder a column


def test_warns_about_future_information_at_construction(monkeypatch):
    monkeypatch.setattr(expert_choice_module, "_warned", False)
    with pytest.warns(UserWarning, match="future"):
        ExpertChoiceRouter(d_model=4, num_experts=4)
    assert "future" in expert_choice_module.__doc__


def test_bad_options_fail_at_build_time():
    with pytest.raises(ValueError, match="router.capacity_factor=0.0 must be > 0"):
        ExpertChoiceRouter(d_model=4, num_experts=4, capacity_factor=0.0)
