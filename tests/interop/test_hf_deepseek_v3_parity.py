"""A tiny random HF DeepSeek-V3 (MLA attention, a dense first block, group-limited sigmoid routing with a
non-zero e_score_correction_bias, a shared expert) loads as a moe-lab model with transformers' logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe import load_model
from moe.interop import hf_run_config
from moe.models.mla import MLAttention
from moe.routers import SigmoidRouter

transformers = pytest.importorskip("transformers")

SIZES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=4, first_k_dense_replace=1, n_routed_experts=8, n_group=4,
             topk_group=2, num_experts_per_tok=2, n_shared_experts=1, kv_lora_rank=16, qk_nope_head_dim=8,
             qk_rope_head_dim=4, v_head_dim=12, max_position_embeddings=64, initializer_range=0.2)


def save_tiny_deepseek_v3(path, **overrides):
    """A random HF DeepSeek-V3 with a random (non-zero) router bias, saved to ``path``."""
    config = transformers.DeepseekV3Config(**{**SIZES, "q_lora_rank": 24, **overrides})
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    for layer in model.model.layers[config.first_k_dense_replace:]:
        layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.5)  # HF initialises it to zero
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.mark.parametrize(("q_lora_rank", "rope_interleave"), [(24, True), (None, True), (24, False)])
def test_deepseek_v3_logits_match_transformers(tmp_path, q_lora_rank, rope_interleave):
    reference = save_tiny_deepseek_v3(tmp_path, q_lora_rank=q_lora_rank, rope_interleave=rope_interleave)
    ours = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)
    assert ours.moe_indices == [1, 2] and isinstance(ours.blocks[0].mixer, MLAttention)
    assert (ours.blocks[0].mixer.q_proj is None) == (q_lora_rank is not None)
    shared = ours.moe_layers[0].shared_expert
    assert shared.gate is None and shared.ffn.up.weight.shape == (32, 64)


def test_router_bias_is_imported_and_changes_the_selection(tmp_path):
    reference = save_tiny_deepseek_v3(tmp_path)
    ours = load_model(tmp_path)
    router = ours.moe_layers[0].router
    hf_gate = reference.model.layers[1].mlp.gate
    assert isinstance(router, SigmoidRouter)
    assert (router.num_groups, router.topk_groups, router.top_k, router.normalize) == (4, 2, 2, True)
    assert router.routed_scaling_factor == 2.5
    assert torch.equal(router.selection_bias_E, hf_gate.e_score_correction_bias)
    # the bias matters: on the tokens that reach this router it changes some token's experts
    seen = []
    ours.blocks[1].ffn.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        ours(torch.randint(0, 97, (2, 40)))
        scores_TE = router.scorer(seen[0].reshape(-1, 64)).sigmoid()
        with_bias = router.select_experts(scores_TE).sort(-1).values
        router.selection_bias_E.zero_()
        without_bias = router.select_experts(scores_TE).sort(-1).values
    assert (with_bias != without_bias).any(dim=-1).sum() >= 1


def test_run_config_balances_like_the_paper(tmp_path):
    transformers.DeepseekV3Config(**SIZES, q_lora_rank=24).save_pretrained(tmp_path)
    config = hf_run_config(tmp_path)
    assert config["model"]["attention"] == "mla" and config["model"]["moe_first_dense"] == 1
    assert config["model"]["d_ff"] == 96 and config["model"]["expert_d_ff"] == 32
    assert config["balance"]["aux_free"]["update_rate"] == 0.001 and config["balance"]["aux_free"]["rule"] == "sign"
    assert config["balance"]["seq_aux"]["coeff"] == 0.0001


def test_mtp_layers_after_the_last_block_are_ignored(tmp_path):
    reference = save_tiny_deepseek_v3(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.3.eh_proj.weight"] = torch.zeros(64, 128)  # an MTP module, as in DeepSeek-V3's layer 61
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0}}, "rope_type='yarn'"),
        ({"topk_method": "greedy"}, "topk_method='greedy'"),
        ({"moe_layer_freq": 2}, "moe_layer_freq=2"),
        ({"n_group": 3}, "n_group=3 does not divide n_routed_experts=8"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"num_key_value_heads": 2}, "num_key_value_heads=2"),
    ],
)
def test_unsupported_features_are_refused(tmp_path, edit, message):
    transformers.DeepseekV3Config(**SIZES, q_lora_rank=24).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(ValueError, match=message):
        hf_run_config(tmp_path)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_no_shared_experts_loads_without_them(tmp_path):
    """n_shared_experts=0: transformers writes empty [0, D] / [D, 0] shared_experts tensors; they hold
    nothing, so the import builds no shared expert and skips them."""
    reference = save_tiny_deepseek_v3(tmp_path, n_shared_experts=0)
    assert load_file(tmp_path / "model.safetensors")["model.layers.1.mlp.shared_experts.up_proj.weight"].numel() == 0
    ours = load_model(tmp_path)
    assert all(layer.shared_expert is None for layer in ours.moe_layers)
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)
