"""SigmoidRouter (DeepSeek-V3 group-limited sigmoid top-k) against direct computations."""

from __future__ import annotations

import pytest
import torch

from moe.routers import SigmoidRouter


def identity_router(**kwargs) -> SigmoidRouter:
    router = SigmoidRouter(d_model=8, num_experts=8, **kwargs)
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(8))
    return router


# groups (E=8, G=4): {0,1} {2,3} {4,5} {6,7}; group score = top-2 sum of sigmoid(logit)
LOGITS = torch.tensor([[3.0, -3.5, 2.0, 1.9, 2.5, -4.0, 0.1, 0.0]])


def test_group_limited_selection_keeps_the_best_groups_only():
    router = identity_router(top_k=2, num_groups=4, topk_groups=2, normalize=True, routed_scaling_factor=2.5)
    routing = router(LOGITS)
    s = LOGITS.sigmoid()[0]
    group_scores = s.view(4, 2).sum(-1)  # two experts per group: the top-2 sum is the group sum
    assert group_scores.topk(2).indices.tolist() == [1, 3]  # {2,3} and {6,7}, not expert 0's or 4's groups
    assert routing.expert_ids_N.tolist() == [2, 3]  # expert 0 (the best single score) is excluded
    expected = torch.stack([s[2], s[3]]) / (s[2] + s[3]) * 2.5
    assert torch.allclose(routing.weights_N, expected)
    assert torch.allclose(routing.probs_TE, (s / s.sum()).unsqueeze(0))


def test_one_group_is_plain_sigmoid_top_k_and_normalize_false_keeps_raw_scores():
    router = identity_router(top_k=2, normalize=False)
    routing = router(LOGITS)
    s = LOGITS.sigmoid()[0]
    assert routing.expert_ids_N.tolist() == [0, 4]
    assert torch.allclose(routing.weights_N, torch.stack([s[0], s[4]]))


def test_one_expert_per_group_uses_the_top_1():
    router = identity_router(top_k=2, num_groups=8, topk_groups=3)
    routing = router(LOGITS)
    assert routing.expert_ids_N.tolist() == [0, 4]


def test_selection_bias_moves_groups_and_selection_but_not_weights():
    router = identity_router(top_k=2, num_groups=4, topk_groups=2)
    with torch.no_grad():
        router.selection_bias_E[0] = 1.0  # group {0,1} now scores s0 + 1 + s1 > every other group
    routing = router(LOGITS)
    s = LOGITS.sigmoid()[0]
    assert sorted(routing.expert_ids_N.tolist()) == [0, 2]
    chosen = routing.expert_ids_N
    assert torch.allclose(routing.weights_N, s[chosen] / s[chosen].sum())  # unbiased s


def test_negative_bias_never_picks_from_a_dropped_group():
    router = identity_router(top_k=2, num_groups=4, topk_groups=2)
    with torch.no_grad():
        router.selection_bias_E.fill_(-5.0)
    routing = router(LOGITS)
    assert set(routing.expert_ids_N.tolist()) <= {2, 3, 6, 7}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_groups": 3}, "router.num_groups=3 must divide num_experts=8"),
        ({"num_groups": 4, "topk_groups": 5}, "router.topk_groups=5 must lie in"),
        ({"num_groups": 4, "topk_groups": 1, "top_k": 3}, "fewer than router.top_k=3"),
        ({"routed_scaling_factor": 0.0}, "router.routed_scaling_factor"),
        ({"top_k": 9}, "top_k=9 > num_experts=8"),
    ],
)
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SigmoidRouter(d_model=4, num_experts=8, **kwargs)
