"""GraniteMoeHybrid (moe/interop/adapters/granitemoehybrid.py): a tiny random Granite-4 hybrid (Mamba-2 +
attention, MoE + shared MLP, Granite's four multipliers away from 1) saved offline loads with transformers'
logits, and a Mamba-2 hybrid MoE of ours exports to GraniteMoeHybridForCausalLM with ours."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from hf_cases import assert_same_logits, randomise_weights

from moe import load_model
from moe.interop import save_hf
from moe.models.attention import Attention
from moe.models.build import build_model
from moe.models.mamba2 import Mamba2Mixer

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("experts, rope, tied", [(4, None, True), (4, "rope", False), (0, None, False)],
                         ids=["moe_nope_tied", "moe_rope", "dense"])
def test_a_granite_hybrid_checkpoint_loads_with_its_logits(tmp_path, experts, rope, tied):
    cfg = transformers.GraniteMoeHybridConfig(
        vocab_size=80, hidden_size=32, intermediate_size=24, shared_intermediate_size=40, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=experts, num_experts_per_tok=2,
        layer_types=["mamba", "attention", "mamba", "mamba"], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
        mamba_n_groups=2, mamba_expand=2, max_position_embeddings=64, position_embedding_type=rope,
        tie_word_embeddings=tied, embedding_multiplier=3.0, logits_scaling=2.5, residual_multiplier=0.5,
        attention_multiplier=0.125, router_aux_loss_coef=0.01)
    torch.manual_seed(0)
    theirs = transformers.GraniteMoeHybridForCausalLM(cfg).eval()
    randomise_weights(theirs)
    theirs.save_pretrained(tmp_path / "granite", safe_serialization=True)
    ours = load_model(tmp_path / "granite")
    assert [type(b.mixer) for b in ours.blocks] == [Mamba2Mixer, Attention, Mamba2Mixer, Mamba2Mixer]
    assert ours.moe_indices == ([0, 1, 2, 3] if experts else [])
    assert (ours.embedding_multiplier, ours.logits_scaling) == (3.0, 2.5)
    assert_same_logits(ours, theirs, 80)


def test_a_mamba2_hybrid_moe_exports_to_granite_with_its_logits(tmp_path):
    """Mamba-2 blocks around one attention block, every block MoE with a shared expert, random weights."""
    config = compose("model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2", "model.expert_d_ff=24",
                     "model.shared_expert_d_ff=40", "model.num_experts=4", "model.max_seq_len=64",
                     "model.n_layers=4", "model.mixer_layers=[mamba2,gqa,mamba2,mamba2]", "model.mamba_head_dim=16",
                     "model.mamba_d_state=8", "++model.position=none", "model.logits_scaling=2.0")
    ours = build_model(config).eval()
    randomise_weights(ours)
    save_hf(ours, tmp_path / "hf", config=config)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "GraniteMoeHybridForCausalLM"
    assert_same_logits(ours, theirs, 257)
    assert_same_logits(load_model(tmp_path / "hf"), theirs, 257)


def test_a_mamba1_hybrid_is_not_written_as_granite(tmp_path):
    config = compose("model=jamba_tiny", "router.order=topk_then_softmax")
    with pytest.raises(ValueError, match="granitemoehybrid: model.ssm=mamba \\(granitemoehybrid's Mamba blocks are "
                                         "Mamba-2\\)"):
        save_hf(build_model(config), tmp_path / "hf", config=config)
