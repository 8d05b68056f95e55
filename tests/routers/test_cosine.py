"""CosineRouter (X-MoE) against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from moe.routers import CosineRouter
from moe.routers.scorers import CosineScorer


def hand_router(**kwargs) -> CosineRouter:
    router = CosineRouter(d_model=3, num_experts=3, d_proj=2, top_k=2, **kwargs)
    with torch.no_grad():
        router.scorer.proj_PD.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        router.scorer.expert_embed_EP.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
    return router


X_TD = torch.tensor([[3.0, 4.0, 7.0], [0.0, -1.0, 5.0]])  # projections (3, 4) and (0, -1)


def test_logits_are_cosines_over_the_temperature_and_weights_the_top_softmax():
    router = hand_router()
    routing = router(X_TD)
    cos_TE = torch.tensor([[0.6, 0.8, 1.0 / (5 * math.sqrt(2))], [0.0, -1.0, -1.0 / math.sqrt(2)]])
    assert torch.allclose(routing.logits_TE, cos_TE / 0.07, atol=1e-5)
    probs_TE = (cos_TE / 0.07).softmax(-1)
    assert torch.allclose(routing.probs_TE, probs_TE, atol=1e-6)
    assert routing.expert_ids_N.tolist() == [1, 0, 0, 2]
    assert torch.allclose(routing.weights_N, probs_TE[[0, 0, 1, 1], [1, 0, 0, 2]], atol=1e-6)


def test_perturbed_cosine_adds_the_constant_to_both_norms():
    router = hand_router(perturbed=True, perturb_constant=0.5)
    routing = router(X_TD)
    # token 0: h = (3, 4), |h| = 5; experts |e| = 1, 2, sqrt(2)
    dots = torch.tensor([3.0, 8.0, 1.0])
    expected = dots / ((5 + 0.5) * (torch.tensor([1.0, 2.0, math.sqrt(2)]) + 0.5)) / 0.07
    assert torch.allclose(routing.logits_TE[0], expected, atol=1e-5)


def test_temperature_is_learned_and_clamped():
    router = hand_router()
    routing = router(X_TD)
    routing.weights_N.sum().backward()
    assert router.scorer.log_temperature.grad is not None and router.scorer.proj_PD.grad.abs().sum() > 0
    assert isinstance(router.scorer, CosineScorer) and not hasattr(router.scorer, "weight_ED")
    with torch.no_grad():
        router.scorer.log_temperature.fill_(math.log(1e-4))
    assert torch.isclose(router.scorer.temperature, torch.tensor(0.01))


def test_selection_bias_changes_selection_not_weights():
    router = hand_router()
    before = router(X_TD)
    with torch.no_grad():
        router.selection_bias_E[2] = 10.0
    after = router(X_TD)
    assert after.expert_ids_N.tolist() == [2, 1, 2, 0]
    assert torch.allclose(after.weights_N, before.probs_TE[[0, 0, 1, 1], [2, 1, 2, 0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_proj": 0}, "router.d_proj=0"),
        ({"init_temperature": 2.0}, "router.init_temperature=2.0 must lie in"),
        ({"perturb_constant": 0.0}, "router.perturb_constant"),
        ({"top_k": 9}, "top_k=9 > num_experts=8"),
    ],
)
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CosineRouter(d_model=4, num_experts=8, **kwargs)
