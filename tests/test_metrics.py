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
    stats = {name: value.item() for name, value in routing_stats(routing).items()}

    def entropy(row):
        return -sum(p * math.log(p) for p in row if p > 0)

    expected_entropy = sum(entropy(r) for r in probs_TE.tolist()) / 3 / math.log(4)
    assert stats["router_entropy"] == pytest.approx(expected_entropy, rel=1e-6)
    assert stats["top1_top2_margin"] == pytest.approx((0.5 + 0.0 + 0.2) / 3, rel=1e-6)
    assert stats["topk_score_sum"] == pytest.approx((0.9 + 0.5 + 0.8) / 3, rel=1e-6)
    assert stats["drop_rate"] == pytest.approx(1 / 4)
    assert stats["unrouted_tokens"] == pytest.approx(1 / 3)
    assert stats["experts_per_token"] == pytest.approx(3 / 3)  # 3 assignments dispatched over 3 tokens


HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


def spy_on_host_reads(patch: pytest.MonkeyPatch) -> list[str]:
    """Record every tensor → host conversion (each one waits for the device on a GPU)."""
    calls: list[str] = []

    def spying(name: str, original):
        def spy(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)
        return spy

    for name in HOST_READS:
        patch.setattr(torch.Tensor, name, spying(name, getattr(torch.Tensor, name)))
    return calls


def test_the_metric_window_reads_the_device_once_per_log_step(smoke, monkeypatch):
    from moe.metrics import MetricWindow
    from moe.models.build import build_model

    config = smoke("balance=[switch_aux,z_loss]")
    model = build_model(config).train()
    ids_BS = torch.randint(0, 257, (2, 17))
    outs = [model(ids_BS[:, :-1], ids_BS[:, 1:]) for _ in range(3)]
    window = MetricWindow()
    with monkeypatch.context() as patch:
        calls = spy_on_host_reads(patch)
        for out in outs:
            window.add(out, tokens=32)
        assert calls == []  # no micro-step waits for the device
        metrics = window.summary()
        assert calls[0] == "tolist" and calls.count("tolist") == 1  # one transfer; the rest is host math
    expected_lm = sum(out.lm_loss.item() for out in outs) / 3
    assert metrics["lm_loss"] == pytest.approx(expected_lm, rel=1e-12)
    layer = next(iter(outs[0].layer_aux))
    loads_E = sum(out.layer_aux[layer].routing.tokens_per_expert_E for out in outs)
    assert metrics[f"layer{layer}/max_vio"] == pytest.approx(load_stats(loads_E)["max_vio"], rel=1e-12)
    entropy = sum(routing_stats(out.layer_aux[layer].routing)["router_entropy"].item() for out in outs) / 3
    assert metrics[f"layer{layer}/router_entropy"] == pytest.approx(entropy, rel=1e-12)
    assert metrics["moe/max_vio"] == pytest.approx(
        sum(metrics[f"layer{i}/max_vio"] for i in outs[0].layer_aux) / len(outs[0].layer_aux), rel=1e-12)
