"""Routing statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from moe.metrics import load_stats, routing_stats
from moe.types import Routing


def test_load_stats_balanced_and_collapsed():
    assert load_stats(torch.tensor([5, 5, 5, 5])) == {"max_vio": 0.0, "load_entropy": 1.0, "dead_experts": 0.0}
    collapsed = load_stats(torch.tensor([12, 0, 0, 0]))
    assert collapsed["max_vio"] == pytest.approx(3.0) and collapsed["load_entropy"] == 0.0
    assert collapsed["dead_experts"] == 3.0
    assert load_stats(torch.tensor([3, 1, 0, 0]))["max_vio"] == pytest.approx((3 - 1) / 1)


def test_routing_stats_on_a_hand_made_routing():
    probs_TE = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.3, 0.5]])
    routing = Routing(
        token_ids_N=torch.tensor([0, 0, 2]), expert_ids_N=torch.tensor([0, 1, 3]),
        weights_N=torch.tensor([0.7, 0.2, 0.5]), logits_TE=probs_TE.clamp_min(1e-9).log(), probs_TE=probs_TE,
        tokens_per_expert_E=torch.tensor([1, 1, 0, 1]), num_dropped=1, top_k=2.0,
    )
    stats = routing_stats(routing)

    def entropy(row):
        return -sum(p * math.log(p) for p in row if p > 0)

    expected_entropy = sum(entropy(r) for r in probs_TE.tolist()) / 3 / math.log(4)
    assert stats["router_entropy"] == pytest.approx(expected_entropy, rel=1e-6)
    assert stats["top1_top2_margin"] == pytest.approx((0.5 + 0.0 + 0.2) / 3, rel=1e-6)
    assert stats["topk_score_sum"] == pytest.approx((0.9 + 0.5 + 0.8) / 3, rel=1e-6)
    assert stats["drop_rate"] == pytest.approx(1 / 4)
    assert stats["unrouted_tokens"] == pytest.approx(1 / 3)
    assert stats["experts_per_token"] == pytest.approx(3 / 3)  # 3 assignments dispatched over 3 tokens
