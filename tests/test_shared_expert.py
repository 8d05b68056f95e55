"""Shared experts: K_s experts held as one SwiGLU equal their sum; the Qwen2-MoE sigmoid gate."""

from __future__ import annotations

import functools

import torch

from moe.experts import GroupedExperts
from moe.models import SwiGLU, build_decoder
from moe.routers import TopKRouter
from moe.shared_expert import SharedExpert


def test_two_shared_experts_equal_the_sum_of_two_swiglus():
    shared = SharedExpert(d_model=8, num_experts=2, d_ff=12)
    a, b = SwiGLU(d_model=8, d_ff=12), SwiGLU(d_model=8, d_ff=12)
    with torch.no_grad():
        for name in ("gate", "up"):
            getattr(a, name).weight.copy_(getattr(shared.ffn, name).weight[:12])
            getattr(b, name).weight.copy_(getattr(shared.ffn, name).weight[12:])
        a.down.weight.copy_(shared.ffn.down.weight[:, :12])
        b.down.weight.copy_(shared.ffn.down.weight[:, 12:])
    x_TD = torch.randn(5, 8)
    assert torch.allclose(shared(x_TD), a(x_TD) + b(x_TD), atol=1e-6)


def test_sigmoid_gate_scales_the_shared_output():
    shared = SharedExpert(d_model=8, num_experts=1, d_ff=12, gate=True)
    x_TD = torch.randn(5, 8)
    expected = torch.sigmoid(x_TD @ shared.gate.weight.T) * shared.ffn(x_TD)
    assert torch.allclose(shared(x_TD), expected, atol=1e-6)


def test_model_builds_shared_experts_of_the_expert_size_by_default():
    model = build_decoder(vocab_size=20, d_model=16, n_layers=2, n_heads=2, d_ff=64, max_seq_len=8, num_experts=4,
                      expert_d_ff=16, num_shared_experts=2, shared_expert_gate=True,
                      router=functools.partial(TopKRouter, top_k=1, order="softmax_then_topk"), experts=GroupedExperts)
    shared = model.moe_layers[0].shared_expert
    assert shared.ffn.up.weight.shape == (32, 16) and shared.gate is not None
    assert torch.isfinite(model(torch.randint(0, 20, (2, 8))).logits).all()
