"""A tiny random HF Mixtral loads as a moe-lab MoE model with transformers' logits, routes through our
TopKRouter (topk_then_softmax), and its aux loss equals HF's load_balancing_loss_func / k."""

from __future__ import annotations

import pytest
import torch

from moe import load_model
from moe.routers import TopKRouter

transformers = pytest.importorskip("transformers")

E, K = 4, 2


def save_tiny_mixtral(path, **overrides):
    config = transformers.MixtralConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=E, num_experts_per_tok=K, max_position_embeddings=64,
        initializer_range=0.2, **overrides)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def test_mixtral_logits_match_transformers(tmp_path):
    reference = save_tiny_mixtral(tmp_path)
    ours = load_model(tmp_path)
    assert len(ours.moe_layers) == 2 and isinstance(ours.moe_layers[0].router, TopKRouter)
    assert ours.moe_layers[0].router.order == "topk_then_softmax"
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)


def test_imported_aux_loss_is_hf_load_balancing_loss_over_k(tmp_path):
    reference = save_tiny_mixtral(tmp_path, router_aux_loss_coef=0.02)
    ours = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        hf = reference(ids, output_router_logits=True)
        out = ours(ids, ids)
    # HF pools all layers' tokens in one call; the per-layer comparison is the exact one
    for i, logits in enumerate(hf.router_logits):
        per_layer = transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func((logits,), E, K)
        assert out.aux_losses[f"layer{i}/switch_aux"].item() == pytest.approx(per_layer.item() / K, rel=1e-5)
    assert out.aux_coeffs["layer0/switch_aux"] == pytest.approx(K * 0.02)
