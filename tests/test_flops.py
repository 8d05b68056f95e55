"""Model FLOPs per token (moe/flops.py): the count agrees with torch's own FLOP counter on a forward, and
routed experts count at their active share."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moe.flops import attention_flops_per_token, matmul_params_per_token, measure_peak_flops, training_flops_per_token
from moe.models.build import build_model

B, S = 2, 16
MLA = {"attention": "mla", "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8}


def build(**model):
    torch.manual_seed(0)
    return build_model({
        "model": {"_target_": "moe.models.build_decoder", "vocab_size": 50, "d_model": 32, "n_layers": 2,
                  "n_heads": 4, "n_kv_heads": 4, "d_ff": 64, "max_seq_len": S, **model},
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": 2, "order": "topk_then_softmax"},
        "experts": {"_target_": "moe.experts.LoopExperts", "_partial_": True},
        "balance": {}}).eval()


@pytest.mark.parametrize("model", [{}, MLA, {"num_experts": 4, "expert_d_ff": 16},
                                   {"num_experts": 4, "expert_d_ff": 16, "num_shared_experts": 1}],
                         ids=["dense", "mla", "moe", "moe+shared"])
def test_the_count_equals_torchs_flop_counter_on_a_forward(model):
    """FlopCounterMode counts every matmul actually run (the loop experts run exactly k rows per token) and
    attention over the full S×S scores; a sequence of 2S−1 tokens has mean causal context S."""
    net = build(**model)
    # the math kernel: the counter does not see into the CPU's fused (flash) attention kernel
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        net(torch.randint(0, 50, (B, S)))
    ours = B * S * (2 * matmul_params_per_token(net) + attention_flops_per_token(net, 2 * S - 1))
    assert ours == counter.get_total_flops()


def test_routed_experts_count_at_k_of_e_and_the_router_in_full():
    """Top-1 over E experts of the dense FFN's width: one FFN per token, plus the router's D×E scores."""
    dense = build()
    top1 = build_model({
        "model": {"_target_": "moe.models.build_decoder", "vocab_size": 50, "d_model": 32, "n_layers": 2,
                  "n_heads": 4, "n_kv_heads": 4, "d_ff": 64, "max_seq_len": S, "num_experts": 4},
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": 1, "order": "topk_then_softmax"},
        "experts": {"_target_": "moe.experts.GroupedExperts", "_partial_": True}, "balance": {}})
    assert matmul_params_per_token(top1) == matmul_params_per_token(dense) + 2 * 32 * 4
    assert training_flops_per_token(top1, S) == 3 * (2 * matmul_params_per_token(top1)
                                                     + attention_flops_per_token(top1, S))


def test_the_peak_probe_measures_a_positive_rate():
    assert measure_peak_flops(torch.device("cpu"), torch.float32, seconds=0.02, size=128) > 1e6


def test_a_run_logs_mfu_against_the_configured_peak(smoke, tmp_path):
    from moe import load_model
    from moe.training import run

    summary = run(smoke("trainer.max_steps=2", "trainer.log_every=1", "trainer.peak_flops=1e9"))
    assert summary["flops_per_token"] == training_flops_per_token(load_model(tmp_path / "run"), 64)
    assert summary["peak_flops"] == 1e9 and summary["peak_flops_source"] == "config"
    assert summary["mfu"] == pytest.approx(summary["tokens_per_s"] * summary["flops_per_token"] / 1e9, rel=1e-12)
