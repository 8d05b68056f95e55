"""Tiny random HF Qwen2-MoE (shared expert with sigmoid gate, a dense first block, both
norm_topk_prob settings), Qwen3-MoE (per-head q/k norm) and OLMoE (full-width q/k norm) load as
moe-lab MoE models with transformers' logits."""

from __future__ import annotations

import pytest
import torch

from moe import load_model

transformers = pytest.importorskip("transformers")

SIZES = dict(vocab_size=97, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_experts_per_tok=2,
             max_position_embeddings=64, initializer_range=0.2)


def load_and_compare(model_cls, config, path):
    """Save a random HF model, load it with moe-lab, assert equal logits; return our model."""
    torch.manual_seed(0)
    reference = model_cls(config).eval()
    reference.save_pretrained(path, safe_serialization=True)
    ours = load_model(path)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)
    return ours


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_qwen2_moe_logits_match_transformers(tmp_path, norm_topk_prob):
    config = transformers.Qwen2MoeConfig(
        **SIZES, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_hidden_layers=3, num_experts=4, norm_topk_prob=norm_topk_prob, mlp_only_layers=[0])
    ours = load_and_compare(transformers.Qwen2MoeForCausalLM, config, tmp_path)
    assert ours.moe_indices == [1, 2] and ours.moe_layers[0].shared_expert.gate is not None
    expected_order = "topk_then_softmax" if norm_topk_prob else "softmax_then_topk"
    assert ours.moe_layers[0].router.order == expected_order


def test_qwen3_moe_logits_match_transformers(tmp_path):
    config = transformers.Qwen3MoeConfig(**SIZES, intermediate_size=96, moe_intermediate_size=32,
                                         num_hidden_layers=2, head_dim=16, num_experts=4, norm_topk_prob=True)
    ours = load_and_compare(transformers.Qwen3MoeForCausalLM, config, tmp_path)
    assert ours.moe_indices == [0, 1] and ours.blocks[0].mixer.q_norm.weight.shape == (16,)  # per head


def test_olmoe_logits_match_transformers(tmp_path):
    config = transformers.OlmoeConfig(**SIZES, intermediate_size=32, num_hidden_layers=2, num_experts=4)
    ours = load_and_compare(transformers.OlmoeForCausalLM, config, tmp_path)
    assert ours.blocks[0].mixer.q_norm.weight.shape == (64,)  # full width, not per head
