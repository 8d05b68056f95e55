"""MoELayer invariants: one expert with top-1 routing is exactly the dense FFN."""

from __future__ import annotations

import functools

import pytest
import torch

from moe.experts import GroupedExperts, LoopExperts
from moe.layer import MoELayer
from moe.models import SwiGLU, build_decoder
from moe.routers import TopKRouter


def copy_dense_into_expert(dense: SwiGLU, experts) -> None:
    with torch.no_grad():
        experts.w_gate_EDF[0].copy_(dense.gate.weight.T)
        experts.w_up_EDF[0].copy_(dense.up.weight.T)
        experts.w_down_EFD[0].copy_(dense.down.weight.T)


@pytest.mark.parametrize("experts_cls", [LoopExperts, GroupedExperts])
@pytest.mark.parametrize("order", ["softmax_then_topk", "topk_then_softmax"])
def test_one_expert_top1_layer_equals_the_dense_ffn(experts_cls, order):
    dense = SwiGLU(d_model=16, d_ff=32)
    layer = MoELayer(router=TopKRouter(d_model=16, num_experts=1, top_k=1, order=order),
                     experts=experts_cls(num_experts=1, d_model=16, d_ff=32))
    copy_dense_into_expert(dense, layer.experts)
    x_BSD = torch.randn(3, 5, 16)
    y_BSD, aux = layer(x_BSD)
    assert torch.allclose(y_BSD, dense(x_BSD), atol=1e-6)
    assert aux.routing.tokens_per_expert_E.tolist() == [15]


def test_one_expert_top1_model_equals_the_dense_model():
    common = dict(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=8)
    torch.manual_seed(1)
    dense = build_decoder(**common)
    moe = build_decoder(**common, num_experts=1, experts=GroupedExperts,
                        router=functools.partial(TopKRouter, top_k=1, order="softmax_then_topk"))
    moe.load_state_dict(dense.state_dict(), strict=False)  # everything but the FFNs
    for dense_block, moe_block in zip(dense.blocks, moe.blocks):
        copy_dense_into_expert(dense_block.ffn, moe_block.ffn.experts)
    ids = torch.randint(0, 40, (2, 8))
    assert torch.allclose(moe(ids).logits, dense(ids).logits, atol=1e-5)


def test_shared_expert_is_added_to_the_routed_output():
    router = TopKRouter(d_model=8, num_experts=4, top_k=2, order="softmax_then_topk")
    experts = LoopExperts(num_experts=4, d_model=8, d_ff=16)
    shared = SwiGLU(d_model=8, d_ff=12)
    x_BSD = torch.randn(2, 3, 8)
    routed_only, _ = MoELayer(router=router, experts=experts)(x_BSD)
    with_shared, _ = MoELayer(router=router, experts=experts, shared_expert=shared)(x_BSD)
    assert torch.allclose(with_shared, routed_only + shared(x_BSD.view(6, 8)).view(2, 3, 8), atol=1e-6)
